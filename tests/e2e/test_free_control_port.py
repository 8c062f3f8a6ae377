"""
Servers on free metadata ports get free control ports too, so that two of them on one
machine never contend for 1339 (imds.config.finish, imds.lab.control); each prints the control
URL it got and publishes it for `imds ctl`.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path

import pytest

from imds.config import CONTROL_PORT
from imds.lab.control import URL_FILE
from tests.conftest import make_config
from tests.support.processes import clean_env, run_imds


class TestFreeControlPort:
    @pytest.mark.parametrize(
        ("settings", "expected"),
        [
            pytest.param({"port": "0"}, 0, id="port-0"),
            pytest.param({"port": "1338", "listen": ["127.0.0.1:0"]}, 0, id="listen-port-0"),
            pytest.param({"port": "1338", "listen": ["127.0.0.1:0", "[::1]:8080"]}, 0,
                         id="one-listen-port-0"),
            pytest.param({"port": "1338", "listen": ["127.0.0.1"]}, CONTROL_PORT,
                         id="listen-fixed-port"),
            pytest.param({"port": "1338", "listen": ["127.0.0.1:0"], "control_port": "7000"},
                         7000, id="given"),
        ],
    )
    def test_a_free_metadata_port_means_a_free_control_port(
        self, settings: dict[str, object], expected: int
    ) -> None:
        assert expected == make_config(**settings).control_port

    def test_two_servers_listening_on_free_ports_run_side_by_side(
        self, tmp_path: Path
    ) -> None:
        """
        `--listen 127.0.0.1:0` twice: each starts, on its own control port, which it
        prints and publishes in its state directory. Before, both asked for 1339.
        """
        with ExitStack() as stack:
            servers = []
            for name in ("a", "b"):
                home = tmp_path / name
                home.mkdir()
                state = tmp_path / f"state-{name}"
                server = stack.enter_context(run_imds(
                    "--port", "1338", "--listen", "127.0.0.1:0", "--state-dir", str(state),
                    env=clean_env(home)))
                servers.append((server, state))
            urls = []
            for server, state in servers:
                [printed] = [match.group(1) for line in server.banner
                             if (match := re.search(r"timeline on (http://\S+?)/ ", line))]
                assert printed == (state / URL_FILE).read_text().strip()
                urls.append(printed)
        ports = {int(url.rsplit(":", 1)[1]) for url in urls}
        assert 2 == len(ports)
        assert CONTROL_PORT not in ports
