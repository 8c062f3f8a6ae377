"""
imds as a Kubernetes node agent, proven without a cluster: a node's network built from
namespaces (issue 15, item 4). Every interface lives in a namespace made here; the host's
own namespace never sees a link-local address (tests/support/netns.py).

    pod-a  eth0 10.90.1.2, fd90:1::2 ── vetha 10.90.1.1, fd90:1::1 ┐
                                                                   ├ [node] lo: 10.90.0.1, fd90::1
    pod-b  eth0 10.90.2.2, fd90:2::2 ── vethb 10.90.2.1, fd90:2::1 ┘   (its own IP)

Each pod's default route goes through the node, as a CNI's does. The node runs
`python -m imds node-setup` exactly as the DaemonSet's init container would, then
`imds serve` with a role map by pod address and Pod Identity associations by service
account, and at the end `imds node-cleanup`, as the preStop hook would. The node also holds
a CNI's and kube-proxy's nat rules, which node-setup and node-cleanup must leave alone.

Variants: mode dummy with a dummy link (skipped where the kernel has none), mode dummy with
a bridge without ports (--link-kind bridge), mode dnat (iptables DNAT to the node's IP:8080).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import netns
from tests.support.processes import ROOT, clean_env, stop_process

pytestmark = pytest.mark.netns

NODE_IP, NODE_IP6 = "10.90.0.1", "fd90::1"
PODS = {"pod-a": (1, "vetha"), "pod-b": (2, "vethb")}
ROLES = {"pod-a": "role-a", "pod-b": "role-b"}
SERVICE_ACCOUNTS = {"pod-a": "sa-a", "pod-b": "sa-b"}
POD_ROLES = {"sa-a": "pod-role-a", "sa-b": "pod-role-b"}
IMDS_V4, IMDS_V6 = "http://169.254.169.254", "http://[fd00:ec2::254]"
AGENT_V4, AGENT_V6 = "http://169.254.170.23", "http://[fd00:ec2::23]"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# A CNI's and kube-proxy's rules on the node before imds arrives (kindnet masquerades the
# pods' traffic; kube-proxy jumps to its own chain first thing in PREROUTING).
CNI_RULES = {
    "iptables": ["-N KUBE-SERVICES", "-A PREROUTING -j KUBE-SERVICES",
                 "-A POSTROUTING -s 10.90.0.0/16 ! -d 10.90.0.0/16 -j MASQUERADE"],
    "ip6tables": ["-N KUBE-SERVICES", "-A PREROUTING -j KUBE-SERVICES",
                  "-A POSTROUTING -s fd90::/32 ! -d fd90::/32 -j MASQUERADE"],
}

# What a client in a pod (or on the node) sends; prints {"status": N, "body": "..."}.
HTTP = """
import json, sys, urllib.request, urllib.error
method, url, headers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
request = urllib.request.Request(url, method=method, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=5) as response:
        out = {"status": response.status, "body": response.read().decode()}
except urllib.error.HTTPError as error:
    out = {"status": error.code, "body": error.read().decode()}
print(json.dumps(out))
"""
PROBE = str(ROOT / "tests" / "clients" / "imds_probe.py")


@dataclass(frozen=True)
class Variant:
    setup: tuple[str, ...]
    listen: tuple[str, ...]
    # Where the node itself reaches the Pod Identity endpoint (Host stays the agent's).
    node_agent: str


LINK_LISTEN = ("169.254.169.254:80", "[fd00:ec2::254]:80", "169.254.170.23:80",
               "[fd00:ec2::23]:80", "169.254.170.2:80")
VARIANTS = {
    "dummy-link": Variant(("--mode", "dummy"), LINK_LISTEN, AGENT_V4),
    "bridge-link": Variant(("--mode", "dummy", "--link-kind", "bridge"), LINK_LISTEN, AGENT_V4),
    "dnat": Variant(("--mode", "dnat", "--interface", "veth+", "--to", f"{NODE_IP}:8080",
                     "--to", f"[{NODE_IP6}]:8080"),
                    (f"{NODE_IP}:8080", f"[{NODE_IP6}]:8080"), f"http://{NODE_IP}:8080"),
}


def dummy_links_unsupported() -> str | None:
    with netns.lab() as probe_lab:
        ns = probe_lab.add("probe")
        result = ns.run(["ip", "link", "add", "probe0", "type", "dummy"])
    if result.returncode != 0:
        return f"this kernel has no dummy links ({result.stderr.strip()}); bridge-link runs"
    return None


def env_for(lab: netns.Lab, **extra: str) -> dict[str, str]:
    """No AWS configuration at all; PATH with the sbin directories, where iptables is."""
    return clean_env(lab.home, **{"PATH": f"{Path(sys.executable).parent}:{PATH}", **extra})


def imds(lab: netns.Lab, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return lab["node"].run([sys.executable, "-m", "imds", *args], env=env_for(lab, **env))


def snapshot(lab: netns.Lab) -> dict[str, str]:
    """The node's addresses, routes and nat rules, without dates and packet counters."""
    out = {}
    for argv in (["ip", "addr"], ["ip", "route"], ["ip", "-6", "route"], ["iptables-save"],
                 ["ip6tables-save"]):
        result = lab["node"].run(argv, env=env_for(lab))
        assert 0 == result.returncode, result.stderr
        lines = [re.sub(r"\[\d+:\d+\]", "[0:0]", line)
                 for line in result.stdout.splitlines() if not line.startswith("#")]
        out[" ".join(argv)] = "\n".join(lines)
    return out


def build_node(made: netns.Lab, home: Path) -> None:
    node = made.add("node")
    made.home = home
    # No duplicate address detection: addresses usable at once, and no "tentative" flag
    # that would differ between two snapshots.
    node.sysctl("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
    netns.address(node, "lo", f"{NODE_IP}/32", f"{NODE_IP6}/128")
    for name, (n, veth) in PODS.items():
        pod = made.add(name)
        pod.sysctl("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        made.link(node, veth, pod, "eth0")
        netns.address(node, veth, f"10.90.{n}.1/24", f"fd90:{n}::1/64")
        netns.address(pod, "eth0", f"10.90.{n}.2/24", f"fd90:{n}::2/64")
        pod.ip("route", "add", "default", "via", f"10.90.{n}.1")
        pod.ip("-6", "route", "add", "default", "via", f"fd90:{n}::1")
    for tool, rules in CNI_RULES.items():
        restore = "\n".join(["*nat", *rules, "COMMIT", ""])
        result = subprocess.run(node.argv([f"{tool}-restore", "--noflush"]), input=restore,
                                capture_output=True, text=True, timeout=30, check=False)
        assert 0 == result.returncode, result.stderr


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netns.Lab]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    netns.sweep_stale()
    with netns.lab() as made:
        build_node(made, tmp_path_factory.mktemp("node-home"))
        yield made


@dataclass
class Node:
    lab: netns.Lab
    variant: Variant
    state: Path
    tokens: dict[str, str]
    before: dict[str, str]
    after_setup: dict[str, str] = field(default_factory=dict)
    server: subprocess.Popen[str] | None = None
    banner: list[str] = field(default_factory=list)
    cleanup: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    def finish(self) -> None:
        """Stop the server and run node-cleanup twice, as a preStop hook run again would."""
        if self.server is not None:
            stop_process(self.server)
            for pipe in (self.server.stdout, self.server.stderr):
                if pipe is not None:
                    pipe.close()
            self.server = None
        if not self.cleanup:
            for _ in range(2):
                self.cleanup.append(imds(self.lab, "node-cleanup", *self.variant.setup))


def start_server(node: Node, role_map: Path) -> None:
    argv = [sys.executable, "-m", "imds", "serve", "--role-name", "node-role",
            "--state-dir", str(node.state), "--role-map", str(role_map),
            *[arg for sa, role in POD_ROLES.items()
              for arg in ("--pod-identity-association", f"default/{sa}={role}")],
            *[arg for address in node.variant.listen for arg in ("--listen", address)]]
    process = node.lab.popen(node.lab["node"], argv,
                             env={**env_for(node.lab), "PYTHONUNBUFFERED": "1"})
    node.server = process
    assert process.stdout is not None
    timer = threading.Timer(30, process.kill)
    timer.start()
    for line in process.stdout:
        node.banner.append(line.rstrip("\n"))
        if line.startswith("imds: serving role"):
            break
    timer.cancel()
    if not any(line.startswith("imds: serving role") for line in node.banner):
        err = process.stderr.read() if process.stderr else ""
        raise AssertionError(f"imds did not start: {node.banner} {err}")
    # Keep reading, so a chatty server never blocks on a full pipe.
    threading.Thread(target=lambda: node.banner.extend(process.stdout or []),
                     daemon=True).start()
    threading.Thread(target=lambda: list(process.stderr or []), daemon=True).start()


@pytest.fixture(scope="class", params=list(VARIANTS))
def node(request: pytest.FixtureRequest, lab: netns.Lab,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    if request.param == "dummy-link":
        reason = dummy_links_unsupported()
        if reason:
            pytest.skip(reason)
    variant = VARIANTS[request.param]
    scratch = tmp_path_factory.mktemp(f"node-{request.param}")
    state = scratch / "state"
    tokens = {}
    for pod, sa in SERVICE_ACCOUNTS.items():
        # As the kubelet projects each pod's service-account token into the pod.
        path = scratch / f"{pod}.jwt"
        result = imds(lab, "pod-token", "--state-dir", str(state), "--namespace", "default",
                      "--service-account", sa, "--pod-name", pod, "--out", str(path))
        assert 0 == result.returncode, result.stderr
        tokens[pod] = str(path)
    role_map = scratch / "roles.toml"
    role_map.write_text('unmapped = "no-role"\n[clients]\n'
                        '"10.90.1.2" = "role-a"\n"fd90:1::/64" = "role-a"\n'
                        '"10.90.2.2" = "role-b"\n"fd90:2::/64" = "role-b"\n')
    made = Node(lab, variant, state, tokens, before=snapshot(lab))
    try:
        first = imds(lab, "node-setup", *variant.setup)
        assert 0 == first.returncode, first.stderr
        made.after_setup = snapshot(lab)
        again = imds(lab, "node-setup", *variant.setup)
        assert 0 == again.returncode, again.stderr
        assert "nothing to do" in again.stdout
        assert made.after_setup == snapshot(lab)
        start_server(made, role_map)
        yield made
    finally:
        made.finish()


def run_json(lab: netns.Lab, where: str, argv: list[str], **env: str) -> dict[str, object]:
    result = lab[where].run([sys.executable, *argv], env=env_for(lab, **env), timeout=60)
    assert 0 == result.returncode, result.stderr
    return dict(json.loads(result.stdout))


def http(lab: netns.Lab, where: str, method: str, url: str, **headers: str
         ) -> dict[str, object]:
    return run_json(lab, where, ["-c", HTTP, method, url, json.dumps(headers)])


def probe(lab: netns.Lab, where: str, *args: str, **env: str) -> dict[str, object]:
    return run_json(lab, where, [PROBE, *args], **env)


def agent_key(node: Node, pod: str) -> str:
    """The key the node serves for a pod's service account, read on the node itself."""
    token = Path(node.tokens[pod]).read_text()
    seen = http(node.lab, "node", "GET", f"{node.variant.node_agent}/v1/credentials",
                Host="169.254.170.23", Authorization=token)
    assert 200 == seen["status"], seen
    return str(json.loads(str(seen["body"]))["AccessKeyId"])


def pod_identity_env(node: Node, pod: str, base: str = AGENT_V4) -> dict[str, str]:
    """What EKS injects into a pod with a Pod Identity association [K-06]."""
    return {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{base}/v1/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": node.tokens[pod]}


class TestNodeAgent:
    @pytest.mark.parametrize("pod", list(PODS))
    def test_boto3_in_each_pod_gets_its_own_role_at_169_254_169_254(
        self, node: Node, pod: str
    ) -> None:
        """[N-01] no AWS settings in the pod: botocore's own address, the pod's own role."""
        direct = probe(node.lab, pod, "raw", "--base", IMDS_V4)
        assert ROLES[pod] == direct["role"]
        seen = probe(node.lab, pod, "boto3")
        assert "iam-role" == seen["method"]
        assert direct["access_key"] == seen["access_key"]

    @pytest.mark.parametrize("pod", list(PODS))
    def test_each_pod_gets_its_own_role_at_fd00_ec2__254(self, node: Node, pod: str) -> None:
        """[N-02] the IPv6 endpoint, mapped by the pod's IPv6 network."""
        assert ROLES[pod] == probe(node.lab, pod, "raw", "--base", IMDS_V6)["role"]

    @pytest.mark.parametrize("pod", list(PODS))
    @pytest.mark.parametrize("base", [AGENT_V4, AGENT_V6], ids=["ipv4", "ipv6"])
    def test_boto3_in_each_pod_gets_its_service_accounts_role_through_pod_identity(
        self, node: Node, pod: str, base: str
    ) -> None:
        """[K-06] the agent's addresses, the pod's own projected token."""
        seen = probe(node.lab, pod, "boto3", **pod_identity_env(node, pod, base))
        assert "container-role" == seen["method"]
        assert agent_key(node, pod) == seen["access_key"]

    def test_the_ecs_address_reaches_imds_from_a_pod(self, node: Node) -> None:
        """[K-01] 169.254.170.2 too: the relative-URI flow, no token."""
        task = (node.state / "ecs-task-id").read_text().strip()
        seen = probe(node.lab, "pod-a", "boto3",
                     AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=f"/v2/credentials/{task}")
        assert "container-role" == seen["method"]

    def test_the_two_pods_hold_different_keys(self, node: Node) -> None:
        imds_keys = {probe(node.lab, pod, "raw")["access_key"] for pod in PODS}
        agent_keys = {agent_key(node, pod) for pod in PODS}
        assert 2 == len(imds_keys) == len(agent_keys)

    def test_a_pod_cannot_ask_for_another_pods_role_by_name(self, node: Node) -> None:
        """[C-05] only the caller's own role is listed, and only it is served."""
        token = str(probe(node.lab, "pod-a", "raw")["token"])
        path = "/latest/meta-data/iam/security-credentials/"
        listing = http(node.lab, "pod-a", "GET", f"{IMDS_V4}{path}",
                       **{"X-aws-ec2-metadata-token": token})
        assert "role-a" == listing["body"]
        other = http(node.lab, "pod-a", "GET", f"{IMDS_V4}{path}role-b",
                     **{"X-aws-ec2-metadata-token": token})
        assert 404 == other["status"]

    def test_a_pod_posing_as_the_other_by_its_address_gets_no_answer(
        self, node: Node
    ) -> None:
        """pod-a sending from pod-b's address (root in its namespace, which a pod is not):
        the node's answer goes to pod-b, so no connection is ever made."""
        pod_a = node.lab["pod-a"]
        pod_a.ip("addr", "add", "10.90.2.2/32", "dev", "eth0")
        try:
            code = ("import http.client\n"
                    "c = http.client.HTTPConnection('169.254.169.254', 80, timeout=2, "
                    "source_address=('10.90.2.2', 0))\n"
                    "try:\n"
                    "    c.request('PUT', '/latest/api/token', headers="
                    "{'X-aws-ec2-metadata-token-ttl-seconds': '60'})\n"
                    "    print(c.getresponse().status)\n"
                    "except OSError as e:\n"
                    "    print(type(e).__name__)\n")
            result = pod_a.run([sys.executable, "-c", code], env=env_for(node.lab))
        finally:
            pod_a.ip("addr", "del", "10.90.2.2/32", "dev", "eth0")
        assert 0 == result.returncode, result.stderr
        assert result.stdout.strip() in {"TimeoutError", "ConnectionResetError",
                                         "ConnectionRefusedError"}, result.stdout

    def test_a_token_another_pod_obtained_is_refused(self, node: Node) -> None:
        """[T-08] an IMDS token is bound to the address that obtained it, DNAT or not."""
        token_b = str(probe(node.lab, "pod-b", "raw")["token"])
        assert 401 == probe(node.lab, "pod-a", "raw", "--token", token_b)["list"]
        assert "role-b" == probe(node.lab, "pod-b", "raw", "--token", token_b)["role"]

    def test_a_service_account_token_the_pod_signed_itself_is_refused(
        self, node: Node, tmp_path: Path
    ) -> None:
        """[K-08] [K-12] pod-a claiming sa-b with a key of its own: not the issuer's, 400."""
        forged = tmp_path / "forged.jwt"
        result = imds(node.lab, "pod-token", "--state-dir", str(tmp_path / "pod-a-key"),
                      "--namespace", "default", "--service-account", "sa-b",
                      "--pod-name", "pod-a", "--out", str(forged))
        assert 0 == result.returncode, result.stderr
        seen = http(node.lab, "pod-a", "GET", f"{AGENT_V4}/v1/credentials",
                    Authorization=forged.read_text())
        assert 400 == seen["status"], seen
        unsigned = probe(node.lab, "pod-a", "boto3",
                         AWS_CONTAINER_CREDENTIALS_FULL_URI=f"{AGENT_V4}/v1/credentials",
                         AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(forged))
        assert None is unsigned["method"]

    def test_node_cleanup_leaves_the_node_as_it_found_it(self, node: Node) -> None:
        """ip addr, ip route (both families), iptables-save and ip6tables-save, compared."""
        assert node.before != node.after_setup
        node.finish()
        first, second = node.cleanup
        assert 0 == first.returncode, first.stderr
        assert 0 == second.returncode, second.stderr
        assert "nothing to do" in second.stdout
        assert node.before == snapshot(node.lab)


def test_the_host_namespace_is_never_touched() -> None:
    """The safety rule of tests/support/netns.py: no link, address or chain of ours here."""
    if netns.unavailable():
        pytest.skip("needs root and network namespaces, as the tests above")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert " imds0:" not in links.stdout
    assert "169.254.169.254" not in Path("/proc/net/fib_trie").read_text()
    for tool in ("iptables-save", "ip6tables-save"):
        rules = subprocess.run([tool], capture_output=True, text=True, check=False).stdout
        assert "IMDS-NODE" not in rules


@pytest.fixture
def bare_node(tmp_path: Path) -> Iterator[netns.Lab]:
    """A node of its own for each refusal: a fresh namespace with the CNI's rules."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    with netns.lab() as made:
        build_node(made, tmp_path)
        yield made


BRIDGE = ("--mode", "dummy", "--link-kind", "bridge")
DNAT = VARIANTS["dnat"].setup


class TestRefusals:
    """Bad input: a clear error, exit 1, and the node exactly as it was."""

    def test_an_address_another_agent_holds_is_refused(self, bare_node: netns.Lab) -> None:
        """[K-13] the EKS agent's own link already holds 169.254.170.23."""
        node = bare_node["node"]
        node.ip("link", "add", "pod-id-link0", "type", "bridge")
        netns.address(node, "pod-id-link0", "169.254.170.23/32")
        before = snapshot(bare_node)
        result = imds(bare_node, "node-setup", *BRIDGE)
        assert 1 == result.returncode
        assert "169.254.170.23 is already on pod-id-link0" in result.stderr
        assert before == snapshot(bare_node)

    def test_a_route_to_an_address_through_another_link_is_refused(
        self, bare_node: netns.Lab
    ) -> None:
        """[K-13] as the EKS agent refuses an equal route on another link."""
        bare_node["node"].ip("route", "add", "169.254.169.254/32", "dev", "vetha")
        before = snapshot(bare_node)
        result = imds(bare_node, "node-setup", *BRIDGE)
        assert 1 == result.returncode
        assert "a route to 169.254.169.254 already goes to vetha" in result.stderr
        assert before == snapshot(bare_node)

    def test_a_link_by_our_name_that_is_not_ours_is_left_alone(
        self, bare_node: netns.Lab
    ) -> None:
        bare_node["node"].ip("link", "add", "imds0", "type", "bridge")
        before = snapshot(bare_node)
        for command in ("node-setup", "node-cleanup"):
            result = imds(bare_node, command, *BRIDGE)
            assert 1 == result.returncode, command
            assert "imds0" in result.stderr and "not imds's" in result.stderr
        assert before == snapshot(bare_node)

    def test_a_failure_halfway_removes_what_the_run_had_added(
        self, bare_node: netns.Lab
    ) -> None:
        """IPv6 off on the node: the link and IPv4 addresses go in, the IPv6 one fails."""
        bare_node["node"].sysctl("net.ipv6.conf.all.disable_ipv6=1",
                                 "net.ipv6.conf.default.disable_ipv6=1")
        before = snapshot(bare_node)
        result = imds(bare_node, "node-setup", *BRIDGE)
        assert 1 == result.returncode
        assert "nothing was left changed" in result.stderr
        assert "--no-ipv6" in result.stderr
        assert before == snapshot(bare_node)
        assert 0 == imds(bare_node, "node-setup", *BRIDGE, "--no-ipv6").returncode

    def test_dnat_without_iptables_is_refused(self, bare_node: netns.Lab) -> None:
        before = snapshot(bare_node)
        result = imds(bare_node, "node-setup", *DNAT,
                      PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
        assert 1 == result.returncode
        assert "iptables-save, iptables-restore not found on PATH" in result.stderr
        assert before == snapshot(bare_node)

    def test_dnat_refused_in_the_second_table_undoes_the_first(
        self, bare_node: netns.Lab, tmp_path: Path
    ) -> None:
        """ip6tables-restore refusing (a stand-in that exits 1): the IPv4 rules go again."""
        tools = tmp_path / "bin"
        tools.mkdir()
        for tool in ("iptables-save", "iptables-restore", "ip6tables-save"):
            (tools / tool).symlink_to(f"/usr/sbin/{tool}")
        refuse = tools / "ip6tables-restore"
        refuse.write_text("#!/bin/sh\necho 'ip6tables-restore: line 2 failed' >&2\nexit 1\n")
        refuse.chmod(0o755)
        before = snapshot(bare_node)
        result = imds(bare_node, "node-setup", *DNAT,
                      PATH=f"{Path(sys.executable).parent}:{tools}:/usr/bin:/bin")
        assert 1 == result.returncode
        assert "line 2 failed; nothing was left changed" in result.stderr
        assert before == snapshot(bare_node)
