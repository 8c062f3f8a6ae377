"""Configuration: one table, four layers, clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from imds.config import OPTIONS, Config, load
from imds.errors import ConfigError


class TestLayers:
    def test_defaults_are_the_embedded_default(self) -> None:
        config = load({}, {})
        assert ("127.0.0.1", 1338, "imds-local-role", "required") == (
            config.host, config.port, config.role_name, config.http_tokens)
        assert 300 == config.refresh_ahead

    def test_cli_beats_env_beats_file(self, tmp_path: Path) -> None:
        file = tmp_path / "imds.toml"
        file.write_text('port = 1000\nrole-name = "from-file"\nregion = "eu-west-1"\n')
        env = {"IMDS_PORT": "2000", "IMDS_ROLE_NAME": "from-env"}
        config = load({"port": "3000"}, env, str(file))
        assert (3000, "from-env", "eu-west-1") == (config.port, config.role_name, config.region)

    def test_config_file_may_come_from_the_environment(self, tmp_path: Path) -> None:
        file = tmp_path / "imds.toml"
        file.write_text("credential_lifetime = 120\nconnection_close = false\n")
        config = load({}, {"IMDS_CONFIG": str(file)})
        assert (120, False) == (config.credential_lifetime, config.connection_close)

    def test_every_config_field_has_exactly_one_option(self) -> None:
        fields = {f.name for f in dataclasses.fields(Config) if not f.metadata.get("cli_only")}
        assert fields == {option.key for option in OPTIONS}

    def test_config_is_frozen(self) -> None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            load({}, {}).port = 1  # type: ignore[misc]


class TestErrors:
    @pytest.mark.parametrize(
        "cli, env, needle",
        [
            ({"port": "http"}, {}, "--port: expected a whole number, got 'http'"),
            ({}, {"IMDS_HTTP_TOKENS": "maybe"}, "IMDS_HTTP_TOKENS: expected one of required"),
            ({"refresh_ahead": "-1"}, {}, "--refresh-ahead: expected 0..21600, got -1"),
            ({"role_name": "bad role"}, {}, "--role-name: expected an IAM role name"),
            ({"region": "mars"}, {}, "--region: expected a region"),
            ({"region": "eu-west-1", "availability_zone": "us-east-1a"}, {},
             "availability_zone 'us-east-1a' is not in region 'eu-west-1'"),
        ],
    )
    def test_error_names_the_setting_and_the_value(
        self, cli: dict[str, str], env: dict[str, str], needle: str
    ) -> None:
        with pytest.raises(ConfigError, match="^.*" + needle.replace(".", r"\.")):
            load(cli, env)

    def test_unknown_file_key_is_an_error(self, tmp_path: Path) -> None:
        file = tmp_path / "imds.toml"
        file.write_text("prot = 1\n")
        with pytest.raises(ConfigError, match="unknown setting 'prot'"):
            load({}, {}, str(file))

    def test_invalid_toml_is_an_error(self, tmp_path: Path) -> None:
        file = tmp_path / "imds.toml"
        file.write_text("port = \n")
        with pytest.raises(ConfigError, match="not valid TOML"):
            load({}, {}, str(file))

    def test_missing_file_is_an_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="does not exist"):
            load({}, {}, str(tmp_path / "absent.toml"))
