"""
A password in `--sts-endpoint-url` (a proxy or test STS behind basic auth) never reaches a
log line, the banner or an error message: it is shown as `****`, as `imds config` shows it.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from imds.creds.sources.sts import AssumeRoleSource
from imds.creds.sources.sts_request import AssumeRoleSettings
from tests.support.processes import clean_env, run
from tests.support.sts_support import BASE_KEY_ID, BASE_SECRET

ROLE = "arn:aws:iam::111122223333:role/app"
PASSWORD = "s3cr3t-Pa55"


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestStsEndpointPassword:
    def test_the_banner_shows_the_endpoint_without_its_password(self) -> None:
        """`describe()` is what `imds serve` prints as it starts."""
        settings = AssumeRoleSettings(role_arns=(ROLE,), session_name="imds",
                                      endpoint_url=f"http://probe:{PASSWORD}@127.0.0.1:9")
        shown = AssumeRoleSource(settings, lambda: 0.0).describe()
        assert "http://probe:****@127.0.0.1:9" in shown
        assert PASSWORD not in shown

    def test_an_unreachable_endpoint_is_named_without_its_password(self, tmp_path: Path) -> None:
        """The startup error names the endpoint, as the user typed it but for the password."""
        url = f"http://probe:{PASSWORD}@127.0.0.1:{closed_port()}"
        env = clean_env(tmp_path, AWS_ACCESS_KEY_ID=BASE_KEY_ID,
                        AWS_SECRET_ACCESS_KEY=BASE_SECRET,
                        IMDS_STATE_DIR=str(tmp_path / "state"))
        result = run([sys.executable, "-m", "imds", "serve", "--port", "0", "--control",
                      "false", "--role-arn", ROLE, "--sts-endpoint-url", url], env)
        output = result.stdout + result.stderr
        assert 3 == result.returncode, output
        assert "probe:****@127.0.0.1" in output
        assert PASSWORD not in output
