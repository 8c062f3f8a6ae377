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
        netns.address(inst, "lo", "169.254.169.254/32", "fd00:ec2::254/128")
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
