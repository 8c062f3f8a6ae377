"""Instance settings through every layer: flags, `IMDS_*` variables and the TOML file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from imds.cli import EXIT_USAGE, main
from imds.config import load
from imds.config.instance import USER_DATA_MAX, InterfaceSpec, SpotAction, Tag
from imds.errors import ConfigError


class TestRepeatableSettings:
    def test_flags_repeat(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`--tags` given twice is two tags; a value may itself hold `=`."""
        assert 0 == main(["config", "--tags", "a=1", "--tags", "b=2=3"], environ={})
        assert "tags = a=1; b=2=3\n" in capsys.readouterr().out

    def test_cli_list_environment_and_file_forms_agree(self, tmp_path: Path) -> None:
        file = tmp_path / "imds.toml"
        file.write_text('tags = { Name = "web", team = "core" }\n'
                        'security-groups = ["web", "ssh"]\n')
        from_file = load({}, {}, str(file))
        from_env = load({}, {"IMDS_TAGS": "Name=web;team=core",
                             "IMDS_SECURITY_GROUPS": "web\nssh"})
        from_cli = load({"tags": ["Name=web", "team=core"],
                         "security_groups": ["web", "ssh"]}, {})
        expected = ((Tag("Name", "web"), Tag("team", "core")), ("web", "ssh"))
        for config in (from_file, from_env, from_cli):
            assert expected == (config.tags, config.security_groups)

    def test_a_higher_layer_replaces_the_whole_list(self, tmp_path: Path) -> None:
        file = tmp_path / "imds.toml"
        file.write_text('security_groups = ["a", "b"]\n')
        assert ("c",) == load({}, {"IMDS_SECURITY_GROUPS": "c"}, str(file)).security_groups

    def test_interfaces_and_events_as_toml_tables(self, tmp_path: Path) -> None:
        file = tmp_path / "imds.toml"
        file.write_text(
            '[[network_interfaces]]\nmac = "0e:00:00:00:00:02"\nprivate-ip = "172.31.40.5"\n'
            '[[maintenance_events]]\ncode = "system-reboot"\n'
            'not_before = "2030-01-21T09:00:43Z"\n'
        )
        config = load({}, {}, str(file))
        assert (InterfaceSpec("0e:00:00:00:00:02", "172.31.40.5"),) == \
            config.network_interfaces
        event = config.maintenance_events[0]
        assert ("system-reboot", "active", dt.datetime(2030, 1, 21, 9, 0, 43, tzinfo=dt.UTC)) \
            == (event.code, event.state, event.not_before)


class TestFlags:
    @pytest.mark.parametrize("argv, expected", [
        ([], False),
        (["--extended-credentials"], True),
        (["--extended-credentials", "false"], False),
    ])
    def test_a_bool_flag_alone_means_true(
        self, argv: list[str], expected: bool, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert 0 == main(["config", *argv], environ={})
        assert f"extended_credentials = {expected}\n" in capsys.readouterr().out

    def test_spot_action_with_a_time(self) -> None:
        config = load({"spot_instance_action": "hibernate@2030-01-02T03:04:05Z"}, {})
        assert SpotAction("hibernate", dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == \
            config.spot_instance_action


class TestConfigCommand:
    def test_lists_render_back_in_their_input_form_and_user_data_is_masked(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert 0 == main(["config", "--tags", "a=1", "--tags", "b=2", "--user-data",
                          "password=hunter2", "--network-interfaces",
                          "mac=0e:00:00:00:00:02,private-ip=10.0.0.5"], environ={})
        out = capsys.readouterr().out
        assert "tags = a=1; b=2\n" in out
        assert "network_interfaces = mac=0e:00:00:00:00:02,private-ip=10.0.0.5\n" in out
        assert "user_data = (16 bytes)\n" in out
        assert "hunter2" not in out

    def test_state_dir_defaults_to_xdg_state_home(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert 0 == main(["config"], environ={"XDG_STATE_HOME": str(tmp_path)})
        assert f"state_dir = {tmp_path / 'imds'}\n" in capsys.readouterr().out

    def test_loading_a_configuration_writes_nothing(self, tmp_path: Path) -> None:
        """The instance id is chosen at the first start, not by `imds config`."""
        config = load({"state_dir": str(tmp_path / "state")}, {})
        assert "" == config.instance_id
        assert not (tmp_path / "state").exists()


class TestErrors:
    @pytest.mark.parametrize("cli, needle", [
        ({"tags": ["has space=1"], "instance_metadata_tags": "true"},
         "tags: tag key 'has space' cannot be exposed in instance metadata"),
        ({"tags": ["_index=1"], "instance_metadata_tags": "true"}, "'_index'"),
        ({"tags": ["novalue"]}, "--tags: expected a tag as KEY=VALUE"),
        ({"network_interfaces": ["mac=0e:00:00:00:00:02"]}, "needs mac= and private-ip="),
        ({"network_interfaces": ["mac=0e:00:00:00:00:02,private-ip=10.0.0.1,vlan=3"]},
         "unknown network interface field(s) vlan"),
        ({"network_interfaces": ["mac=0e:49:61:0f:c3:11,private-ip=10.0.0.1"]},
         "each interface needs its own MAC"),
        ({"spot_instance_action": "explode"}, "expected terminate|stop|hibernate"),
        ({"spot_instance_action": "stop@tomorrow"}, "expected a time like"),
        ({"maintenance_events": ["reboot-please"]}, "event code must be one of"),
        ({"maintenance_events": ["system-reboot,state=maybe"]}, "event state must be one of"),
        ({"user_data": "x", "user_data_file": "/etc/hostname"}, "both set"),
        ({"user_data_file": "/no/such/file"}, "user_data_file '/no/such/file'"),
        ({"public_ip": "300.1.1.1"}, "--public-ip: expected an IPv4 address"),
        ({"public_key": "not a key"}, "expected an OpenSSH public key line"),
        ({"security_groups": []}, "at least one security group"),
    ])
    def test_error_names_the_setting(self, cli: dict[str, object], needle: str) -> None:
        with pytest.raises(ConfigError) as exc:
            load(cli, {})
        assert needle in str(exc.value)

    def test_user_data_over_16_kb_is_refused(self, tmp_path: Path) -> None:
        """[U-01]"""
        (tmp_path / "big").write_bytes(b"x" * (USER_DATA_MAX + 1))
        with pytest.raises(ConfigError, match="at most 16384"):
            load({"user_data_file": str(tmp_path / "big")}, {})
        (tmp_path / "max").write_bytes(b"x" * USER_DATA_MAX)
        assert USER_DATA_MAX == len(load({"user_data_file": str(tmp_path / "max")},
                                         {}).user_data_bytes or b"")

    def test_cli_reports_a_bad_instance_setting_with_exit_2(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert EXIT_USAGE == main(["serve", "--spot-instance-action", "explode"], environ={})
        assert "--spot-instance-action" in capsys.readouterr().err
