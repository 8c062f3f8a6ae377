"""
imds at 169.254.169.254:80 and [fd00:ec2::254]:80, for real, in private network namespaces.

Topology (every interface lives inside a namespace made by the test; the host's own
namespace never sees these addresses):

    ctr-a 10.89.0.2 ─┐
                     ├ br0 10.89.0.1 ─ [instance] lo: 169.254.169.254, fd00:ec2::254
    ctr-b 10.89.0.3 ─┘                      │ 10.89.1.1
                                            │
                                   10.89.1.2 [router] 10.89.2.1 ─ 10.89.2.2 far

    (and fd89::/64, fd89:1::/64, fd89:2::/64 alongside)

ctr-a/ctr-b sit on a bridge of the instance, as containers on a Docker bridge with the
server beside them; `far` is one routed hop further, as a container behind a NAT bridge on
a real EC2 host, the setup in which a hop limit of 1 loses the token response [N-05].
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import netns
from tests.support.processes import ROOT, clean_env

pytestmark = pytest.mark.netns

PROBE = str(ROOT / "tests" / "clients" / "imds_probe.py")
JS_CHAIN = ROOT / "tests" / "js" / "default_chain.mjs"
IMDS_V4 = "http://169.254.169.254"
IMDS_V6 = "http://[fd00:ec2::254]"
A, B, FAR = "10.89.0.2", "10.89.0.3", "10.89.2.2"
BAD_TOKEN = "A" * 56


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netns.Lab]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    netns.sweep_stale()
    with netns.lab() as made:
        inst, router = made.add("instance"), made.add("router")
        # The metadata addresses are the instance's own, on its loopback.
        # With the container credential endpoints' too: ECS's and EKS Pod Identity's [K-01]
        # [K-06].
        netns.address(inst, "lo", "169.254.169.254/32", "fd00:ec2::254/128",
                      "169.254.170.2/32", "169.254.170.23/32", "fd00:ec2::23/128")
        inst.ip("link", "add", "br0", "type", "bridge")
        inst.ip("link", "set", "br0", "up")
        netns.address(inst, "br0", "10.89.0.1/24", "fd89::1/64")
        for role, host in (("ctr-a", 2), ("ctr-b", 3)):
            ctr = made.add(role)
            made.link(inst, f"v{role}", ctr, "eth0")
            inst.ip("link", "set", f"v{role}", "master", "br0")
            netns.address(ctr, "eth0", f"10.89.0.{host}/24", f"fd89::{host}/64")
            ctr.ip("route", "add", "default", "via", "10.89.0.1")
            ctr.ip("-6", "route", "add", "default", "via", "fd89::1")
        made.link(inst, "vrouter", router, "up0")
        netns.address(inst, "vrouter", "10.89.1.1/24", "fd89:1::1/64")
        netns.address(router, "up0", "10.89.1.2/24", "fd89:1::2/64")
        inst.ip("route", "add", "10.89.2.0/24", "via", "10.89.1.2")
        inst.ip("-6", "route", "add", "fd89:2::/64", "via", "fd89:1::2")
        router.sysctl("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        router.ip("route", "add", "default", "via", "10.89.1.1")
        router.ip("-6", "route", "add", "default", "via", "fd89:1::1")
        far = made.add("far")
        made.link(router, "down0", far, "eth0")
        netns.address(router, "down0", "10.89.2.1/24", "fd89:2::1/64")
        netns.address(far, "eth0", "10.89.2.2/24", "fd89:2::2/64")
        far.ip("route", "add", "default", "via", "10.89.2.1")
        far.ip("-6", "route", "add", "default", "via", "fd89:2::1")
        made.home = tmp_path_factory.mktemp("netns-home")
        yield made


def env_for(lab: netns.Lab, **extra: str) -> dict[str, str]:
    """No AWS configuration at all: no keys, no endpoint variable, empty config files."""
    return clean_env(lab.home, **extra)


@dataclass
class Server:
    banner: list[str]
    output: list[str] = field(default_factory=list)


@contextmanager
def imds_in_instance(lab: netns.Lab, *args: str) -> Iterator[Server]:
    """`imds serve` inside the instance namespace on both EC2 endpoints, port 80."""
    argv = [sys.executable, "-m", "imds", "serve", "--role-name", "netns-role",
            "--listen", "169.254.169.254:80", "--listen", "[fd00:ec2::254]:80", *args]
    process = lab.popen(lab["instance"], argv, env={**env_for(lab), "PYTHONUNBUFFERED": "1"})
    server = Server(banner=[])
    assert process.stdout is not None and process.stderr is not None
    drain = threading.Thread(target=lambda: server.output.extend(process.stderr or []),
                             daemon=True)
    drain.start()
    timer = threading.Timer(30, process.kill)
    timer.start()
    for line in process.stdout:
        server.banner.append(line.rstrip("\n"))
        if line.startswith("imds: serving role"):
            break
    timer.cancel()
    if not any("serving role" in line for line in server.banner):
        process.wait(5)
        drain.join(5)
        raise AssertionError(f"imds did not start: {server.banner} {server.output}")
    rest = threading.Thread(target=lambda: server.banner.extend(process.stdout or []),
                            daemon=True)
    rest.start()
    try:
        yield server
    finally:
        process.terminate()
        process.wait(10)
        # The pipes reach EOF once the process is gone; join before the lab closes them.
        drain.join(10)
        rest.join(10)


def probe(lab: netns.Lab, where: str, *args: str, **env: str) -> dict[str, object]:
    result = lab[where].run([sys.executable, PROBE, *args], env=env_for(lab, **env),
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def served_key(lab: netns.Lab) -> str:
    """The key the server hands out for its own role, read from inside the instance."""
    seen = probe(lab, "instance", "raw", "--base", IMDS_V4)
    assert 200 == seen["credentials"], seen
    return str(seen["access_key"])


@pytest.fixture(scope="class")
def server(lab: netns.Lab) -> Iterator[Server]:
    """The server on its defaults (hop limit 1, one role), on both EC2 endpoints."""
    with imds_in_instance(lab) as server:
        yield server


@pytest.fixture(scope="class")
def roles_server(lab: netns.Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    role_map = tmp_path_factory.mktemp("rolemap") / "roles.toml"
    role_map.write_text(
        'unmapped = "no-role"\n'
        "[clients]\n"
        f'"{A}" = "role-a"\n'
        f'"{B}/32" = "role-b"\n'
        '"fd89::/64" = "role-v6"\n'
    )
    with imds_in_instance(lab, "--role-map", str(role_map)) as server:
        yield server


class TestLinkLocalEndpoints:
    def test_banner_lists_both_ec2_endpoints(self, server: Server) -> None:
        assert "http://169.254.169.254:80" in server.banner[0]
        assert "http://[fd00:ec2::254]:80" in server.banner[0]

    def test_boto3_with_no_configuration_gets_the_served_keys_over_ipv4(
        self, lab: netns.Lab, server: Server
    ) -> None:
        """[N-01] no endpoint variable, no config: botocore's built-in 169.254.169.254."""
        seen = probe(lab, "ctr-a", "boto3")
        assert "iam-role" == seen["method"]
        assert served_key(lab) == seen["access_key"]

    def test_boto3_gets_them_over_ipv6_with_the_endpoint_mode_variable(
        self, lab: netns.Lab, server: Server
    ) -> None:
        """[N-02] [A-06] [S-PY-10] mode IPv6 makes botocore use http://[fd00:ec2::254]."""
        lab["ctr-a"].ip("route", "add", "blackhole", "169.254.169.254/32")
        try:
            seen = probe(lab, "ctr-a", "boto3", AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE="IPv6")
        finally:
            lab["ctr-a"].ip("route", "del", "blackhole", "169.254.169.254/32")
        assert "iam-role" == seen["method"]
        assert served_key(lab) == seen["access_key"]

    def test_a_token_used_from_another_address_is_refused(
        self, lab: netns.Lab, server: Server
    ) -> None:
        """[T-08] a token is bound to the address that obtained it."""
        token = str(probe(lab, "ctr-a", "raw")["token"])
        assert 200 == probe(lab, "ctr-a", "raw", "--token", token)["list"]
        assert 401 == probe(lab, "ctr-b", "raw", "--token", token)["list"]

    def test_a_rebinding_host_name_is_refused_over_the_link(
        self, lab: netns.Lab, server: Server
    ) -> None:
        assert 403 == probe(lab, "ctr-a", "raw", "--host-header", "evil.example")["put"]
        assert 200 == probe(lab, "ctr-a", "raw", "--host-header", "169.254.169.254")["put"]


class TestHopLimit:
    """[N-05] [T-22] the token response leaves with the configured IP TTL / hop limit."""

    def test_hop_limit_1_loses_the_token_behind_a_router_but_not_on_the_bridge(
        self, lab: netns.Lab
    ) -> None:
        with imds_in_instance(lab, "--hop-limit", "1"):
            assert 200 == probe(lab, "ctr-a", "raw")["put"]
            for base in (IMDS_V4, IMDS_V6):
                # Connected, request sent, no answer: the reply died at the router.
                assert "timeout" == probe(lab, "far", "raw", "--base", base,
                                          "--timeout", "1.5")["put"], base
                # Other responses are not limited: the path itself works.
                assert 401 == probe(lab, "far", "raw", "--base", base,
                                    "--token", BAD_TOKEN)["list"], base
            # botocore: token PUT times out, IMDSv1 is refused (required): no credentials.
            assert None is probe(lab, "far", "boto3")["method"]

    def test_hop_limit_2_reaches_the_client_behind_the_router(self, lab: netns.Lab) -> None:
        with imds_in_instance(lab, "--hop-limit", "2"):
            for base in (IMDS_V4, IMDS_V6):
                seen = probe(lab, "far", "raw", "--base", base)
                assert 200 == seen["credentials"], (base, seen)
            seen = probe(lab, "far", "boto3")
            assert "iam-role" == seen["method"]
            assert served_key(lab) == seen["access_key"]


class TestPerContainerRoles:
    def test_each_container_gets_its_own_role_through_the_default_chain(
        self, lab: netns.Lab, roles_server: Server
    ) -> None:
        keys = {}
        for ctr, role in (("ctr-a", "role-a"), ("ctr-b", "role-b")):
            seen = probe(lab, ctr, "boto3")
            direct = probe(lab, ctr, "raw")
            assert role == direct["role"]
            assert "iam-role" == seen["method"]
            assert direct["access_key"] == seen["access_key"]
            keys[ctr] = seen["access_key"]
        assert keys["ctr-a"] != keys["ctr-b"]

    def test_the_role_follows_the_callers_address_family(
        self, lab: netns.Lab, roles_server: Server
    ) -> None:
        """Over IPv6 ctr-a calls from fd89::2, which the map gives another role."""
        assert "role-v6" == probe(lab, "ctr-a", "raw", "--base", IMDS_V6)["role"]

    def test_an_unmapped_caller_sees_an_instance_without_a_profile(
        self, lab: netns.Lab, roles_server: Server
    ) -> None:
        """[C-05] `unmapped = "no-role"`: iam/ is 404, as on EC2 without an instance profile."""
        seen = probe(lab, "instance", "raw")
        assert 200 == seen["put"]
        assert 404 == seen["list"]

    def test_a_token_from_one_container_is_refused_in_the_other(
        self, lab: netns.Lab, roles_server: Server
    ) -> None:
        token_a = str(probe(lab, "ctr-a", "raw")["token"])
        assert 401 == probe(lab, "ctr-b", "raw", "--token", token_a)["list"]
        assert "role-a" == probe(lab, "ctr-a", "raw", "--token", token_a)["role"]


def test_nothing_is_left_behind_in_the_host_namespace() -> None:
    """The host's own namespace never gets the metadata address (safety rule)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to read every namespace")
    listing = Path("/proc/net/fib_trie").read_text()
    assert "169.254.169.254" not in listing


ECS_ROLE, POD_ROLE = "ecs-task-role", "pod-role"


@pytest.fixture(scope="class")
def containers_server(lab: netns.Lab, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[tuple[Server, Path]]:
    """The server also at ECS's and the Pod Identity agent's addresses, as a node runs them."""
    state = tmp_path_factory.mktemp("netns-state")
    with imds_in_instance(lab, "--state-dir", str(state),
                          "--listen", "169.254.170.2:80", "--listen", "169.254.170.23:80",
                          "--listen", "[fd00:ec2::23]:80",
                          "--ecs-task", f"app={ECS_ROLE}",
                          "--pod-identity-association", f"default/app={POD_ROLE}") as server:
        yield server, state


def container_key(lab: netns.Lab, url: str, **headers: str) -> str:
    """The AccessKeyId an endpoint serves, read with the standard library in the instance."""
    code = ("import json, sys, urllib.request; r = urllib.request.Request(sys.argv[1], "
            "headers=json.loads(sys.argv[2])); "
            "print(json.load(urllib.request.urlopen(r, timeout=5))['AccessKeyId'])")
    result = lab["instance"].run([sys.executable, "-c", code, url, json.dumps(headers)],
                                 env=env_for(lab), timeout=30)
    assert 0 == result.returncode, result.stderr
    return result.stdout.strip()


def token_file(state: Path, home: Path) -> str:
    from imds.containers.satoken import load_or_create_key, mint

    path = home / "eks-pod-identity-token"
    path.write_text(mint(load_or_create_key(state), namespace="default", service_account="app",
                         pod_name="app-0"))
    return str(path)


class TestContainerEndpoints:
    def test_boto3_with_only_the_relative_uri_gets_the_task_role(
        self, lab: netns.Lab, containers_server: tuple[Server, Path]
    ) -> None:
        """[K-01] ECS's own flow: http://169.254.170.2 + the relative URI, no token."""
        seen = probe(lab, "ctr-a", "boto3",
                     AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="/v2/credentials/app")
        assert "container-role" == seen["method"]
        assert container_key(lab, "http://169.254.170.2/v2/credentials/app") \
            == seen["access_key"]

    def test_boto3_gets_pod_identity_over_ipv6_with_a_token_file(
        self, lab: netns.Lab, containers_server: tuple[Server, Path]
    ) -> None:
        """[K-06] the agent's IPv6 address, as EKS sets it for IPv6 clusters."""
        _, state = containers_server
        tokens = token_file(state, lab.home)
        seen = probe(lab, "ctr-a", "boto3",
                     AWS_CONTAINER_CREDENTIALS_FULL_URI="http://[fd00:ec2::23]/v1/credentials",
                     AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=tokens)
        assert "container-role" == seen["method"]
        expected = container_key(lab, "http://169.254.170.23/v1/credentials",
                                 Authorization=Path(tokens).read_text())
        assert expected == seen["access_key"]

    def test_the_relative_uri_wins_over_the_full_uri_and_both_over_imds(
        self, lab: netns.Lab, containers_server: tuple[Server, Path]
    ) -> None:
        """[K-01] [E-09] the SDK's own order, with every variable set at once."""
        _, state = containers_server
        seen = probe(lab, "ctr-a", "boto3",
                     AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="/v2/credentials/app",
                     AWS_CONTAINER_CREDENTIALS_FULL_URI="http://169.254.170.23/v1/credentials",
                     AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=token_file(state, lab.home),
                     AWS_EC2_METADATA_SERVICE_ENDPOINT="http://169.254.169.254")
        assert "container-role" == seen["method"]
        assert container_key(lab, "http://169.254.170.2/v2/credentials/app") \
            == seen["access_key"]
        assert served_key(lab) != seen["access_key"]

    def test_js_default_chain_takes_the_relative_uri_over_the_full_uri_and_imds(
        self, lab: netns.Lab, containers_server: tuple[Server, Path], node_modules: Path
    ) -> None:
        """[K-01] [E-09] the same with the AWS SDK for JavaScript v3's default chain."""
        _, state = containers_server
        env = env_for(lab, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="/v2/credentials/app",
                      AWS_CONTAINER_CREDENTIALS_FULL_URI="http://169.254.170.23/v1/credentials",
                      AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=token_file(state, lab.home),
                      AWS_EC2_METADATA_SERVICE_ENDPOINT="http://169.254.169.254")
        result = lab["ctr-a"].run(["node", str(JS_CHAIN)], env=env, timeout=60)
        assert 0 == result.returncode, result.stderr
        seen = json.loads(result.stdout)["accessKeyId"]
        assert container_key(lab, "http://169.254.170.2/v2/credentials/app") == seen
        assert served_key(lab) != seen

    def test_pod_identity_refuses_a_pod_that_calls_it_by_another_address(
        self, lab: netns.Lab, containers_server: tuple[Server, Path]
    ) -> None:
        """[K-08] a Host that is not the agent's: a proxy or a name pointed at the node."""
        _, state = containers_server
        code = ("import sys, urllib.request, urllib.error; r = urllib.request.Request("
                "sys.argv[1], headers={'Authorization': open(sys.argv[2]).read(), "
                "'Host': '10.89.0.1'})\n"
                "try: urllib.request.urlopen(r, timeout=5); print(200)\n"
                "except urllib.error.HTTPError as e: print(e.code, e.read().decode().strip())")
        result = lab["ctr-a"].run([sys.executable, "-c", code,
                                   "http://169.254.170.23/v1/credentials",
                                   token_file(state, lab.home)], env=env_for(lab), timeout=30)
        assert "403 Called agent through invalid address" == result.stdout.strip(), result.stderr
