"""The flags of `imds node-setup`/`node-cleanup`: read by the real parser, refused with exit 2
before anything on the node is touched (imds.node.options)."""

from __future__ import annotations

import ipaddress

import pytest

from imds.cli import _parser, main
from imds.node.options import NodeOptions, Target, from_args


def options(*argv: str) -> NodeOptions:
    return from_args(_parser().parse_args(argv))


class TestNodeOptions:
    def test_the_defaults_are_the_eks_agents_way_on_a_link_named_imds0(self) -> None:
        assert NodeOptions(mode="dummy", link="imds0", link_kind="dummy", ipv6=True,
                           interfaces=("veth+",), targets=()) == options("node-setup")

    def test_dnat_reads_both_targets_and_every_interface_glob(self) -> None:
        seen = options("node-setup", "--mode", "dnat", "--to", "10.0.0.5:8080",
                       "--to", "[fd00::5]:8081", "--interface", "cali+",
                       "--interface", "eni+")
        assert ("cali+", "eni+") == seen.interfaces
        assert (Target(ipaddress.ip_address("10.0.0.5"), 8080),
                Target(ipaddress.ip_address("fd00::5"), 8081)) == seen.targets
        assert ["10.0.0.5:8080", "[fd00::5]:8081"] == [str(t) for t in seen.targets]

    def test_no_ipv6_leaves_out_the_ipv6_addresses(self) -> None:
        assert ("169.254.169.254", "169.254.170.23", "169.254.170.2") \
            == options("node-setup", "--no-ipv6").addresses()

    def test_cleanup_needs_no_target(self) -> None:
        assert () == options("node-cleanup", "--mode", "dnat").targets

    @pytest.mark.parametrize(("argv", "message"), [
        pytest.param(["--mode", "dnat"], "needs --to", id="dnat-without-to"),
        pytest.param(["--mode", "dnat", "--to", "[fd00::5]:80"], "needs an IPv4 --to",
                     id="dnat-ipv6-only"),
        pytest.param(["--mode", "dnat", "--to", "10.0.0.5:80"], "IPv6 --to as well",
                     id="dnat-ipv4-only-with-ipv6"),
        pytest.param(["--to", "10.0.0.5"], "expected ADDRESS:PORT", id="to-without-port"),
        pytest.param(["--to", "10.0.0.5:70000"], "not in 1..65535", id="to-port-too-big"),
        pytest.param(["--to", "10.0.0.500:80"], "not an IP address", id="to-not-an-address"),
        pytest.param(["--to", "10.0.0.5:80", "--to", "10.0.0.6:80"], "at most one IPv4",
                     id="two-ipv4-targets"),
        pytest.param(["--interface", "veth*"], "--interface 'veth*'", id="shell-glob"),
        pytest.param(["--interface", "-j ACCEPT"], "--interface", id="rule-injection"),
        pytest.param(["--link", "a-name-longer-than-15"], "--link", id="link-name-too-long"),
    ])
    def test_a_bad_flag_is_exit_2_naming_it(
        self, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert 2 == main(["node-setup", *argv], environ={})
        captured = capsys.readouterr()
        assert message in captured.err
        assert "" == captured.out
