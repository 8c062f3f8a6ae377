"""
The real image and compose topology, run with podman (/work/shared/CONTAINERS.md).

The project's Dockerfile is built on a locally debootstrapped Debian base (no registry
here; cached across runs), then compose.yaml runs under podman-compose inside a network
namespace made for the test: the app container, with no AWS configuration at all, gets its
credentials from 169.254.169.254 and sees them rotate; with compose.roles.yaml, two client
containers get different roles and one's token is refused in the other. compose.ecs.yaml
and compose.pod-identity.yaml run their app to its exit: boto3's default chain gets a task
role from 169.254.170.2 and a Pod Identity role from 169.254.170.23 (one image build serves
all of them). The compose files also pass a real schema check (Debian's docker-compose 1.29
`config -q`).

Without root, podman, runc or debootstrap these tests skip, saying what is missing;
scripts/system-deps installs them (as root) on Debian.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import containers, netns
from tests.support.processes import ROOT

pytestmark = pytest.mark.containers

IMDS_IMAGE = "localhost/imds:test"
PROBE = (ROOT / "tests" / "clients" / "imds_probe.py").read_text()
COMPOSE = ROOT / "compose.yaml"
ROLES = ROOT / "compose.roles.yaml"
STS = ROOT / "compose.sts.yaml"
ECS = ROOT / "compose.ecs.yaml"
POD_IDENTITY = ROOT / "compose.pod-identity.yaml"
# The task id compose.ecs.yaml starts the server with (--ecs-task) and gives its app.
ECS_TASK = "5f0c7a2e-8d41-4b6a-9c3e-2a7d1e9b6f40"
TOKEN_DIR = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
# What examples/compose/container_app.py prints once the default chain found credentials.
CONTAINER_APP_OK = re.compile(
    r"credentials: method=container-role access_key_id=ASIA\w{12}(\w{4})\b")
# The server's log line for each key it mints (its last four characters only).
ROTATED = re.compile(r"rotated credentials for role (\S+): key …(\w{4})")
ROUND = re.compile(r"round \d+: key=…(\w{4}) source=(\S+) .*caller=(\S+) ok")


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[containers.Podman]:
    """Podman ready to run our images: base image, imds image and moto image built."""
    reason = containers.unavailable()
    if reason:
        pytest.skip(reason)
    netns.sweep_stale()
    root = containers.cache_dir()
    with containers.cache_lock(root, timeout=600) as locked:
        if not locked:
            pytest.skip(f"another test run holds {root / 'lock'} for 10 minutes")
        run_dir = root / "run"
        # Runtime state of an earlier run (killed or after a reboot) is never reused; the
        # paths stay the same, since podman's database remembers them.
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        with netns.lab() as lab:
            engine = containers.Podman(root=root, run_dir=run_dir, namespace=lab.add("podman"))
            engine.write_config()
            started = time.monotonic()
            engine.clear_leftovers()
            engine.ensure_base_image()
            engine.build(IMDS_IMAGE, ROOT, args={"BASE": containers.BASE_IMAGE})
            engine.prune_if_large()
            engine.timings.phases["image ready"] = round(time.monotonic() - started, 1)
            try:
                yield engine
            finally:
                engine.clear_leftovers()
                (root / "timings.json").write_text(json.dumps(engine.timings.phases, indent=2))


@pytest.fixture(scope="module")
def moto_image(podman: containers.Podman) -> str:
    """compose.yaml's stand-in for AWS (motoserver/moto), built here from the same moto
    release the host tests use, since no registry can be pulled from."""
    version = importlib.metadata.version("moto")
    tag = f"localhost/moto:{version}"
    if not podman.image_exists(tag):
        folder = ROOT / "tests" / "containers"
        podman.build(tag, folder, containerfile=folder / "moto.Containerfile",
                     args={"BASE": containers.BASE_IMAGE, "MOTO_VERSION": version})
    return tag


def compose(podman: containers.Podman, moto_image: str | None, *files: Path
            ) -> containers.Compose:
    """A project of these files on the test images; `moto_image` for those with an STS."""
    return containers.Compose(
        podman=podman,
        project=f"imdst{os.getpid()}",
        files=files,
        cwd=ROOT,
        env={
            "IMDS_IMAGE": IMDS_IMAGE,
            **({"MOTO_IMAGE": moto_image} if moto_image else {}),
            # New keys every ~3 s, an app round every second: rotations within seconds.
            "IMDS_CREDENTIAL_LIFETIME": "6",
            "IMDS_REFRESH_AHEAD": "3",
            "APP_INTERVAL": "1",
        },
    )


def wait_for(condition: Callable[[], object], timeout: float, what: str,
              context: Callable[[], str] = lambda: "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{context()}")
        time.sleep(0.5)


def probe(project: containers.Compose, service: str, *args: str) -> dict[str, object]:
    """tests/clients/imds_probe.py run inside a service's container (stdin: the script)."""
    result = project.exec(service, "python3", "-", *args, stdin=PROBE)
    assert 0 == result.returncode, result.stderr
    return json.loads(result.stdout)


class TestComposeSchema:
    """The compose files against the Compose schema of a real implementation."""

    @pytest.fixture
    def docker_compose(self) -> str:
        found = shutil.which("docker-compose")
        if found is None:
            pytest.skip("docker-compose (Debian package, 1.29) is not installed; "
                        "scripts/system-deps installs it as root")
        return found

    def check(self, docker_compose: str, *files: Path, **env: str
              ) -> subprocess.CompletedProcess[str]:
        argv = [docker_compose]
        for path in files:
            argv += ["-f", str(path)]
        return subprocess.run([*argv, "config", "-q"], capture_output=True, text=True,
                              timeout=60, check=False, cwd=ROOT,
                              env={"PATH": os.environ["PATH"], "HOME": "/nonexistent", **env})

    def test_compose_yaml_and_its_variants_are_valid(self, docker_compose: str) -> None:
        role = {"IMDS_ROLE_ARN": "arn:aws:iam::111122223333:role/app"}
        for files, env in [((COMPOSE,), {}), ((COMPOSE, ROLES), {}), ((COMPOSE, STS), role)]:
            result = self.check(docker_compose, *files, **env)
            assert 0 == result.returncode, (files, result.stderr)

    def test_the_container_credential_files_are_valid(self, docker_compose: str) -> None:
        for path in (ECS, POD_IDENTITY):
            result = self.check(docker_compose, path)
            assert 0 == result.returncode, (path, result.stderr)

    def test_the_check_rejects_a_broken_file(self, docker_compose: str, tmp_path: Path) -> None:
        """The validator is real: a wrong type for `init` fails it."""
        broken = tmp_path / "compose.yaml"
        broken.write_text(COMPOSE.read_text().replace("init: true", "init: sometimes", 1))
        result = self.check(docker_compose, broken)
        assert 0 != result.returncode
        assert "init" in result.stderr

    def test_the_sts_variant_insists_on_a_role(self, docker_compose: str) -> None:
        result = self.check(docker_compose, COMPOSE, STS)
        assert 0 != result.returncode
        assert "set IMDS_ROLE_ARN" in result.stderr


class TestImage:
    def test_it_runs_imds_serve_as_a_non_root_user_with_a_healthcheck(
        self, podman: containers.Podman
    ) -> None:
        inspected = json.loads(podman.podman("image", "inspect", IMDS_IMAGE).stdout)[0]
        config = inspected["Config"]
        assert ["imds", "serve"] == config["Entrypoint"]
        assert "imds" == config["User"]
        assert "80/tcp" in config["ExposedPorts"]
        assert ["CMD", "python3", "-m", "imds.health"] == inspected["Healthcheck"]["Test"]

    def test_port_80_needs_the_unprivileged_port_sysctl(self, podman: containers.Podman) -> None:
        """As a non-root user the server cannot bind port 80 by default; it says so."""
        refused = podman.podman("run", "--rm", IMDS_IMAGE, check=False, timeout=120)
        assert 3 == refused.returncode
        assert "cannot listen on 0.0.0.0:80" in refused.stderr

    def test_the_healthcheck_passes_once_it_serves(self, podman: containers.Podman) -> None:
        name = f"imdst{os.getpid()}-health"
        podman.podman("run", "-d", "--name", name,
                      "--sysctl", "net.ipv4.ip_unprivileged_port_start=80", IMDS_IMAGE)
        try:
            wait_for(lambda: podman.podman("healthcheck", "run", name,
                                           check=False).returncode == 0,
                     30, "a passing health check",
                     lambda: podman.podman("logs", name, check=False).stderr)
        finally:
            podman.podman("rm", "--force", "--time", "0", name, check=False)


class TestCompose:
    def test_the_app_gets_rotating_credentials_from_169_254_169_254(
        self, podman: containers.Podman, moto_image: str
    ) -> None:
        project = compose(podman, moto_image, COMPOSE)
        with podman.timings.phase("compose.yaml: up, two keys seen, down"), project.up():
            # No AWS configuration in the app container: no variable, no ~/.aws.
            env = project.exec("app", "env").stdout
            assert [] == [line for line in env.splitlines() if line.startswith("AWS_")]
            assert 0 != project.exec("app", "sh", "-c", "ls -d ~/.aws /root/.aws").returncode

            def keys() -> list[str]:
                return [m.group(1) for m in ROUND.finditer(project.logs("app"))]

            seen = wait_for(lambda: len(set(keys())) >= 2 and keys(), 90,
                            "the app to sign with two different keys",
                            lambda: project.logs("app") + project.logs("imds"))
            assert isinstance(seen, list)
            rounds = ROUND.findall(project.logs("app"))
            assert {"iam-role"} == {source for _, source, _ in rounds}
            # The server listens on both EC2 endpoints, pinned in compose.yaml [N-01], and
            # the app's SDK (no endpoint setting) reached the IPv4 one with IMDSv2.
            served = project.logs("imds")
            assert "http://169.254.169.254:80, http://[fd00:ec2::254]:80" in served
            assert 200 == probe(project, "app", "raw", "--base",
                                "http://169.254.169.254")["credentials"]
            # The IPv6 endpoint, pinned at fd00:ec2::254, for SDKs in IPv6 mode [N-02].
            assert 200 == probe(project, "app", "raw", "--base",
                                "http://[fd00:ec2::254]")["credentials"]
            ipv6 = project.exec("app", "env", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6",
                                "python3", "-", "boto3", stdin=PROBE)
            assert "iam-role" == json.loads(ipv6.stdout)["method"], ipv6.stderr

    def test_two_containers_get_their_own_roles_and_cannot_share_a_token(
        self, podman: containers.Podman, moto_image: str
    ) -> None:
        project = compose(podman, moto_image, COMPOSE, ROLES)
        with podman.timings.phase("compose.roles.yaml: up, probes, down"), project.up():
            wait_for(lambda: probe(project, "reports", "raw").get("put") == 200, 60,
                     "imds to answer", lambda: project.logs("imds"))
            reports = probe(project, "reports", "raw")
            billing = probe(project, "billing", "raw")
            assert ("reports-role", "billing-role") == (reports["role"], billing["role"])
            assert reports["access_key"] != billing["access_key"]
            # The default chain in each container finds its own role's keys.
            default_chain = probe(project, "reports", "boto3")
            assert "iam-role" == default_chain["method"]
            assert str(default_chain["access_key"]).startswith("ASIA")
            # A token is bound to the address that obtained it [T-08].
            stolen = probe(project, "billing", "raw", "--token", str(reports["token"]))
            assert 401 == stolen["list"]
            assert 200 == probe(project, "reports", "raw", "--token",
                                str(reports["token"]))["list"]


def inspect(podman: containers.Podman, container: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(
        podman.podman("container", "inspect", container).stdout)
    return found[0]


def aws_variables(podman: containers.Podman, container: str) -> list[str]:
    """The AWS_* variables a (stopped) container ran with: image, compose file and engine."""
    return sorted(item for item in inspect(podman, container)["Config"]["Env"]
                  if item.startswith("AWS_"))


def served_role(output: str) -> str | None:
    """The role whose key the container app printed, found by the key's last four
    characters in the server's rotation log; None if the app printed no key."""
    found = CONTAINER_APP_OK.search(output)
    if found is None:
        return None
    roles = {role for role, suffix in ROTATED.findall(output) if suffix == found.group(1)}
    assert 1 == len(roles), (found.group(0), ROTATED.findall(output))
    return roles.pop()


class TestComposeContainerCredentials:
    """compose.ecs.yaml and compose.pod-identity.yaml, run until their app exits."""

    def test_an_ecs_task_gets_its_role_from_169_254_170_2_with_only_the_relative_uri(
        self, podman: containers.Podman
    ) -> None:
        project = compose(podman, None, ECS)
        with podman.timings.phase("compose.ecs.yaml: up until the app exits, down"), \
                project.until_exit("app", timeout=180) as run:
            output = run.stdout + run.stderr
            assert 0 == run.returncode, output
            # The role of its task, not the server's own (imds-local-role).
            assert "app-task-role" == served_role(output), output
            # What ECS gives a task and nothing else: no keys, no token, no IMDS setting;
            # the task id is the one the server was started with [K-01].
            assert [f"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/{ECS_TASK}"
                    ] == aws_variables(podman, project.container("app"))

    def test_a_pod_gets_its_role_from_169_254_170_23_with_a_minted_token_file(
        self, podman: containers.Podman
    ) -> None:
        project = compose(podman, None, POD_IDENTITY)
        with podman.timings.phase("compose.pod-identity.yaml: up until the app exits, down"), \
                project.until_exit("app", timeout=180) as run:
            output = run.stdout + run.stderr
            assert 0 == run.returncode, output
            # The role of its association, not the server's own (imds-local-role).
            assert "app-pod-role" == served_role(output), output
            # What EKS injects into a pod [K-06]: the agent's full URI and the token file,
            # which the pod can read but not change.
            app = project.container("app")
            assert [f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={TOKEN_DIR}/eks-pod-identity-token",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials",
                    ] == aws_variables(podman, app)
            assert [False] == [mount["RW"] for mount in inspect(podman, app)["Mounts"]
                               if mount["Destination"] == TOKEN_DIR]
