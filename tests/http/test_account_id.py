"""
The simulated instance's account with an STS-backed role: an account id that is set (flag,
variable or file) wins, even when it is the default's value; only an unset one is taken from
the role ARN. One that differs from the role's account is kept, with a warning at startup.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest

from imds.config import load
from tests.conftest import ServerFactory
from tests.support.sts_support import BASE_KEY_ID, BASE_SECRET

ROLE = "arn:aws:iam::444455556666:role/app"
TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
# The account of an instance that has no other (docs/instance.md).
DEFAULT_ACCOUNT_ID = "123456789012"


def load_with(layer: str, account: str, tmp_path: Path) -> str:
    """The account id loaded with the role ARN on the command line and `account` in `layer`."""
    cli: dict[str, object] = {"role_arn": [ROLE]}
    env: dict[str, str] = {}
    file = None
    if layer == "flag":
        cli["account_id"] = account
    elif layer == "variable":
        env["IMDS_ACCOUNT_ID"] = account
    else:
        path = tmp_path / "imds.toml"
        path.write_text(f'account-id = "{account}"\n')
        file = str(path)
    return load(cli, env, file).account_id


@pytest.fixture(autouse=True)
def no_way_to_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should any call miss the test endpoints, it goes (https) to a closed loopback port."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")


class TestAnAccountIdThatIsSetWins:
    @pytest.mark.parametrize("layer", ["flag", "variable", "file"])
    def test_even_when_it_is_the_defaults_value(self, layer: str, tmp_path: Path) -> None:
        """Set to 123456789012 it stays, where only an unset one becomes the role's."""
        assert "444455556666" == load({"role_arn": [ROLE]}, {}).account_id
        assert DEFAULT_ACCOUNT_ID == load({}, {}).account_id
        assert DEFAULT_ACCOUNT_ID == load_with(layer, DEFAULT_ACCOUNT_ID, tmp_path)
        assert "999988887777" == load_with(layer, "999988887777", tmp_path)


class TestStartup:
    async def test_another_account_than_the_roles_is_served_with_a_warning(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, moto_url: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    ) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", BASE_KEY_ID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", BASE_SECRET)
        with caplog.at_level(logging.WARNING, logger="imds.server"):
            await imds_factory(role_arn=ROLE, sts_endpoint_url=moto_url)
            assert [] == [r for r in caplog.records if r.name == "imds.server"], \
                "the role's own account: no warning"
            server = await imds_factory(role_arn=ROLE, sts_endpoint_url=moto_url,
                                        account_id=DEFAULT_ACCOUNT_ID)
        async with http.put(server.url + "/latest/api/token", headers=TTL) as response:
            token = {"X-aws-ec2-metadata-token": await response.text()}
        async with http.get(server.url + "/latest/dynamic/instance-identity/document",
                            headers=token) as response:
            document = json.loads(await response.text())
        assert DEFAULT_ACCOUNT_ID == document["accountId"]
        (warning,) = [r.getMessage() for r in caplog.records if r.name == "imds.server"]
        assert f"account_id {DEFAULT_ACCOUNT_ID} is not the account of the served role" in warning
        assert "444455556666" in warning
