"""
One frozen configuration, loaded one way: CLI > `IMDS_*` environment > TOML file > defaults.

Every setting is declared once in `OPTIONS`; the command line flags, the environment
variable names and the config file keys are all derived from that table, so the three
can never disagree. Nothing outside this module and `cli.py` reads `os.environ`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imds.errors import ConfigError
from imds.protocol import TTL_MAX

ENV_PREFIX = "IMDS_"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs, validated. Build it with `load()`."""

    # Where to listen.
    host: str = "127.0.0.1"
    port: int = 1338
    # Token and auth behaviour.
    http_tokens: str = "required"
    # The role and its rotation [L-01].
    role_name: str = "imds-local-role"
    credential_lifetime: int = 3600
    refresh_ahead: int = 300
    # The simulated instance [M-02] [M-03].
    account_id: str = "123456789012"
    region: str = "us-east-1"
    availability_zone: str = ""
    instance_id: str = ""
    instance_type: str = "m5.large"
    ami_id: str = "ami-0abcdef1234567890"
    private_ip: str = "172.31.16.10"
    mac: str = "0e:49:61:0f:c3:11"
    # Operations.
    log_level: str = "info"
    log_format: str = "text"
    # [N-04] every real response closes its connection; off lets clients keep it alive.
    connection_close: bool = True
    config_file: str = field(default="", metadata={"cli_only": True})

    @property
    def zone(self) -> str:
        return self.availability_zone or f"{self.region}a"


# ---------------------------------------------------------------------------- parsers


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected {low}..{high}, got {value}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _pattern(regex: str, what: str) -> Callable[[str], str]:
    compiled = re.compile(regex)

    def parse(raw: str) -> str:
        if not compiled.fullmatch(raw):
            raise ValueError(f"expected {what}, got {raw!r}")
        return raw

    return parse


def _ipv4(raw: str) -> str:
    try:
        return str(ipaddress.IPv4Address(raw))
    except ValueError:
        raise ValueError(f"expected an IPv4 address, got {raw!r}") from None


def _text(raw: str) -> str:
    return raw


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its flag, environment variable and file key all come from `key`."""

    key: str
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


# IAM role names: [\w+=,.@-]{1,64}.
_ROLE_NAME = r"[\w+=,.@-]{1,64}"

OPTIONS: tuple[Option, ...] = (
    Option("host", _text, "address to listen on", "ADDR"),
    Option("port", _int_range(0, 65535), "port to listen on; 0 picks a free one", "PORT"),
    Option(
        "http_tokens",
        _choice("required", "optional"),
        "required: IMDSv2 only (401 without a token); optional: IMDSv1 too",
        "MODE",
    ),
    Option("role_name", _pattern(_ROLE_NAME, "an IAM role name"), "role name to serve", "NAME"),
    Option(
        "credential_lifetime",
        _int_range(1, 43200),
        "seconds each locally minted credential set is valid",
        "SECONDS",
    ),
    Option(
        "refresh_ahead",
        _int_range(0, TTL_MAX),
        "serve new credentials this many seconds before the old expire (at most half the "
        "lifetime)",
        "SECONDS",
    ),
    Option("account_id", _pattern(r"\d{12}", "a 12-digit account id"), "AWS account id", "ID"),
    Option("region", _pattern(r"[a-z]{2}(-[a-z]+)+-\d", "a region like us-east-1"), "region"),
    Option(
        "availability_zone",
        _pattern(r"[a-z]{2}(-[a-z]+)+-\d[a-z]", "a zone like us-east-1a"),
        "availability zone (default: the region + 'a')",
        "ZONE",
    ),
    Option("instance_id", _pattern(r"i-[0-9a-f]{8,17}", "an id like i-0123456789abcdef0"),
           "instance id (default: stable per machine)", "ID"),
    Option("instance_type", _pattern(r"[a-z0-9-]+\.[a-z0-9]+", "a type like m5.large"),
           "instance type", "TYPE"),
    Option("ami_id", _pattern(r"ami-[0-9a-f]{8,17}", "an id like ami-0abc…"), "AMI id", "ID"),
    Option("private_ip", _ipv4, "private IPv4 address", "ADDR"),
    Option("mac", _pattern(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", "a MAC like 0e:49:61:0f:c3:11"),
           "MAC address of eth0", "MAC"),
    Option("log_level", _choice("debug", "info", "warning", "error"), "log level", "LEVEL"),
    Option("log_format", _choice("text", "json"), "log line format", "FORMAT"),
    Option(
        "connection_close",
        _bool,
        "close every connection after its response, as EC2 does (true|false)",
        "BOOL",
    ),
)

_BY_KEY = {option.key: option for option in OPTIONS}


def _coerce(option: Option, value: Any, origin: str) -> Any:
    # TOML gives typed values; flags and variables give strings. Parse all as strings so
    # every layer goes through the same checks.
    raw = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def read_file(path: str) -> dict[str, Any]:
    """Read a TOML config file; keys may be spelled with `-` or `_`."""
    try:
        with Path(path).open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
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
        for key, value in read_file(path).items():
            option = _BY_KEY.get(key)
            if option is None:
                raise ConfigError(f"config file {path!r}: unknown setting {key!r}")
            values[key] = _coerce(option, value, f"config file {path!r}, {key}")

    for option in OPTIONS:
        if option.env in env:
            values[option.key] = _coerce(option, env[option.env], option.env)

    for key, value in cli.items():
        option = _BY_KEY.get(key)
        if option is not None:
            values[key] = _coerce(option, value, option.flag)

    values["config_file"] = path
    return finish(Config(**values))


def finish(config: Config) -> Config:
    """Fill derived defaults and check settings that depend on each other."""
    changes: dict[str, Any] = {}
    if not config.instance_id:
        changes["instance_id"] = default_instance_id(config.account_id)
    if config.availability_zone and not config.availability_zone.startswith(config.region):
        raise ConfigError(
            f"availability_zone {config.availability_zone!r} is not in region {config.region!r}"
        )
    return dataclasses.replace(config, **changes) if changes else config


def default_instance_id(seed: str) -> str:
    """A realistic instance id that stays the same across restarts on one machine."""
    digest = hashlib.sha256(f"{socket.gethostname()}/{seed}".encode()).hexdigest()
    return "i-0" + digest[:16]


def describe(config: Config) -> list[tuple[str, str]]:
    """The effective settings as (key, value) rows, for `imds config`."""
    return [(option.key, str(getattr(config, option.key))) for option in OPTIONS]


def option_names() -> Sequence[str]:
    return [option.key for option in OPTIONS]
