"""
Loading the configuration, one way: CLI > `IMDS_*` environment > TOML file > defaults,
then `finish()`, the one step that reads files (the role map, the user data, the saved
instance id) and checks settings against each other. Nothing outside this package and
`cli.py` reads `os.environ`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imds.config import containers, sts
from imds.config import instance as inst
from imds.config.model import CONTROL_PORT, DEFAULT_ACCOUNT_ID, ENV_PREFIX, Config
from imds.config.options import _BY_KEY, OPTIONS, Option
from imds.config.tomlfile import read_toml
from imds.errors import ConfigError


def _scalar(value: Any) -> Any:
    # TOML gives typed values; flags and variables give strings. Parse all as strings so
    # every layer goes through the same checks; a TOML table stays a mapping for the
    # structured settings that accept one.
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, Mapping) else str(value)


def _items(option: Option, value: Any) -> list[Any]:
    if isinstance(value, Mapping) and option.pairs:
        return [f"{key}={item}" for key, item in value.items()]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _coerce(option: Option, value: Any, origin: str) -> Any:
    try:
        if option.repeated:
            return tuple(option.parse(_scalar(item)) for item in _items(option, value))
        return option.parse(_scalar(value))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _toml_type(value: Any) -> str:
    """The TOML type of a value tomllib returned, as the TOML spec names it."""
    if isinstance(value, bool):
        return "boolean"
    for kind, name in ((int, "integer"), (float, "float"), (str, "string"), (list, "array"),
                       (dict, "table")):
        if isinstance(value, kind):
            return name
    return "date-time"


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _toml_field(value: Any, where: str) -> str:
    """A field of a table (a tag's value, an interface's mac): any TOML scalar, as text."""
    if isinstance(value, list | dict):
        raise ValueError(f"{where}: expected a string, got {_a(_toml_type(value))}")
    if isinstance(value, bool):
        return str(value).lower()
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _toml_item(option: Option, value: Any, where: str = "") -> str | dict[str, str]:
    """
    One value of `option` from TOML as a flag would give it: text, or for a setting that
    takes tables (`[[network_interfaces]]`) the table's fields as text. A string is always
    accepted, as in an `IMDS_*` variable; otherwise the TOML type must be the setting's
    (an integer also stands for its digits in a string setting, e.g. an account id).
    Raises ValueError naming the expected and the given type, never echoing the value
    (it may be a masked one).
    """
    wanted = option.toml_type
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        if wanted == "boolean":
            return str(value).lower()
    elif isinstance(value, int):
        if wanted != "boolean":
            return str(value)
    elif isinstance(value, float):
        if wanted == "float":
            return repr(value)
    elif isinstance(value, dict) and option.table:
        return {str(key): _toml_field(item, f"{where}{key}") for key, item in value.items()}
    expected = _a(wanted) + (" or a table" if option.table else "")
    raise ValueError(f"{where}expected {expected}, got {_a(_toml_type(value))}")


def _from_toml(option: Option, value: Any) -> Any:
    """A TOML value of `option`, type-checked, in the form `_coerce` takes from a flag."""
    if not option.repeated:
        return _toml_item(option, value)
    if isinstance(value, dict) and option.pairs:
        return [f"{key}={_toml_field(item, str(key))}" for key, item in value.items()]
    if isinstance(value, list):
        return [_toml_item(option, item, f"item {index}: ")
                for index, item in enumerate(value, start=1)]
    return [_toml_item(option, value)]


def _env_items(raw: str) -> list[str]:
    """A repeatable setting in one variable: items separated by newlines or `;`."""
    return [item.strip() for item in re.split(r"[;\n]", raw) if item.strip()]


def read_file(path: str, origin: str = "--config") -> dict[str, Any]:
    """
    Read a TOML config file; keys may be spelled with `-` or `_`. Every way it can fail is
    a ConfigError naming `origin` (the flag or variable that named the file).
    """
    data = read_toml(path, f"{origin}: config file {path!r}")
    return {key.replace("-", "_"): value for key, value in data.items()}


def load(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """
    Merge the layers into one validated `Config`.

    Args:
        cli: values given on the command line (None for flags not given).
        env: the process environment; only `IMDS_*` names are read.
        config_file: a TOML file; defaults to `IMDS_CONFIG` from `env`.
    """
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    env = env or {}
    values: dict[str, Any] = {}

    path = config_file or env.get(ENV_PREFIX + "CONFIG") or ""
    if path:
        for key, value in read_file(path, "--config" if config_file else "IMDS_CONFIG").items():
            option = _BY_KEY.get(key)
            if option is None:
                raise ConfigError(f"config file {path!r}: unknown setting {key!r}")
            origin = f"config file {path!r}, {key}"
            try:
                given = _from_toml(option, value)
            except ValueError as exc:
                raise ConfigError(f"{origin}: {exc}") from None
            values[key] = _coerce(option, given, origin)

    for option in OPTIONS:
        if option.env in env:
            raw: Any = env[option.env]
            if option.repeated:
                raw = _env_items(raw)
            values[option.key] = _coerce(option, raw, option.env)

    for key, value in cli.items():
        option = _BY_KEY.get(key)
        if option is not None:
            values[key] = _coerce(option, value, option.flag)

    values["config_file"] = path
    if not values.get("state_dir"):
        values["state_dir"] = inst.default_state_dir(env)
    return finish(Config(**values))


def finish(config: Config) -> Config:
    """Fill derived defaults and check settings that depend on each other."""
    changes: dict[str, Any] = {}
    state_dir = config.state_dir or inst.default_state_dir({})
    changes["state_dir"] = state_dir
    if not config.instance_id:
        # Read only: a new id is chosen and saved when the server first starts
        # (`imds.instance.simulated.resolve`), so loading a configuration writes nothing.
        changes["instance_id"] = saved_instance_id(state_dir)
    listen = tuple(endpoint.with_port(config.port) for endpoint in config.listen)
    if config.listen:
        changes["listen"] = listen
    if config.control_port is None:
        # Servers on free ports (tests, parallel runs) must not contend for one control
        # port, whether the free port comes from --port 0 or from --listen ADDR:0.
        free = config.port == 0 or any(endpoint.port == 0 for endpoint in listen)
        changes["control_port"] = 0 if free else CONTROL_PORT
    map_arns: tuple[str, ...] = ()
    if config.role_map:
        from imds.config import rolemap

        # A bad map is a usage error at load time, not later; its role ARNs use the STS
        # settings as --role-arn does.
        roles = rolemap.read(config.role_map).roles()
        map_arns = tuple(role for role in roles if rolemap.is_arn(role))
    if config.availability_zone and not config.availability_zone.startswith(config.region):
        raise ConfigError(
            f"availability_zone {config.availability_zone!r} is not in region {config.region!r}"
        )
    if not config.security_groups:
        raise ConfigError("security_groups: an instance has at least one security group")
    if config.instance_metadata_tags:
        try:
            inst.check_tag_keys(config.tags)
        except ValueError as exc:
            raise ConfigError(f"tags: {exc}") from None
    macs = [config.mac, *(nic.mac for nic in config.network_interfaces)]
    devices = [0, *(nic.device_number if nic.device_number is not None else index
                    for index, nic in enumerate(config.network_interfaces, start=1))]
    if len(set(macs)) != len(macs) or len(set(devices)) != len(devices):
        raise ConfigError("network_interfaces: each interface needs its own MAC and device "
                          f"number; got MACs {macs} and device numbers {devices}")
    if config.user_data and config.user_data_file:
        raise ConfigError("user_data and user_data_file are both set; give one")
    changes["account_id"] = config.account_id or DEFAULT_ACCOUNT_ID
    # ECS task roles and Pod Identity associations may name ARNs too: STS settings apply.
    container_roles = [*containers.tasks(config.ecs_task).values(),
                       *containers.associations(config.pod_identity_association).values()]
    if config.pod_identity_associations:
        if config.pod_identity_association:
            raise ConfigError("pod_identity_associations and pod_identity_association are "
                              "both set; give one")
        container_roles += containers.read_associations(config.pod_identity_associations).values()
    map_arns += tuple(role for role in container_roles if role.startswith("arn:"))
    changes.update(_sts_changes(config, map_arns))
    changes["user_data_bytes"] = _user_data(config)
    return dataclasses.replace(config, **changes)


def _sts_changes(config: Config, map_arns: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        sts.check(
            role_arns=config.role_arn or map_arns,
            policy_arns=config.policy_arn,
            session_tags=config.session_tag,
            sts_only={key: getattr(config, key) for key in (
                "role_session_name", "external_id", "policy_file", "policy_arn", "session_tag",
                "source_identity", "profile", "sts_endpoint_url", "check_trust")},
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not config.role_arn:
        return {}
    changes: dict[str, Any] = {}
    if not config.role_session_name:
        changes["role_session_name"] = sts.default_session_name()
    if not config.account_id:
        # On EC2 an instance profile's role lives in the instance's account, so unless an
        # account is asked for (flag, variable or file), the simulated instance belongs to
        # the served role's. One that is asked for wins: see `account_mismatch`.
        changes["account_id"] = sts.split_role_arn(config.role_arn[-1])[1]
    return changes


def account_mismatch(config: Config) -> str:
    """
    A warning when the instance's account is not the served role's, else "".

    EC2 never shows this (an instance profile holds a role of the instance's own account),
    so it is more often a leftover or a typo than a wish; but it is allowed, for whoever
    wants the identity document to show another account than the role's.
    """
    if not config.role_arn:
        return ""
    role_account = sts.split_role_arn(config.role_arn[-1])[1]
    if config.account_id == role_account:
        return ""
    return (f"account_id {config.account_id} is not the account of the served role "
            f"{config.role_arn[-1]} ({role_account}); the instance documents show "
            f"{config.account_id}, the credentials belong to {role_account}")


INSTANCE_ID_FILE = "instance-id"
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")


def saved_instance_id(state_dir: str) -> str:
    """The instance id saved in `state_dir` by an earlier start, or "" if there is none."""
    try:
        saved = (Path(state_dir) / INSTANCE_ID_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return saved if _INSTANCE_ID.fullmatch(saved) else ""


def _user_data(config: Config) -> bytes | None:
    # [U-01] served as the raw bytes given, binary-safe; read here, once, at startup.
    if config.user_data_file:
        try:
            data = Path(config.user_data_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"user_data_file {config.user_data_file!r}: {exc.strerror}") \
                from None
    elif config.user_data:
        data = config.user_data.encode("utf-8")
    else:
        return None
    if len(data) > inst.USER_DATA_MAX:
        raise ConfigError(f"user data is {len(data)} bytes; EC2 allows at most "
                          f"{inst.USER_DATA_MAX} (16 KB)")
    return data


def describe(config: Config) -> list[tuple[str, str]]:
    """The effective settings as (key, value) rows, for `imds config`."""
    rows = []
    for option in OPTIONS:
        value = getattr(config, option.key)
        if option.masked:
            shown = f"({len(value.encode())} bytes)" if value else ""
        elif option.url:
            shown = sts.mask_url(value)
        elif option.repeated:
            shown = "; ".join(str(item) for item in value)
        elif value is None:
            shown = ""
        elif option.key == "instance_id" and not value:
            shown = "(chosen at first start and saved in state_dir)"
        else:
            shown = str(value)
        rows.append((option.key, shown))
    return rows


def option_names() -> Sequence[str]:
    return [option.key for option in OPTIONS]
