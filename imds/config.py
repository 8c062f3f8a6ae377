"""
One frozen configuration, loaded one way: CLI > `IMDS_*` environment > TOML file > defaults.

Every setting is declared once in `OPTIONS`; the command line flags, the environment
variable names and the config file keys are all derived from that table, so the three
can never disagree. Nothing outside this module and `cli.py` reads `os.environ`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imds import instance_settings as inst
from imds import sts_settings as sts
from imds.errors import ConfigError
from imds.hoplimit import HOP_LIMIT_MAX, HOP_LIMIT_MIN
from imds.listen import Endpoint, parse_endpoint
from imds.netguard import parse_host_name, parse_network
from imds.protocol import TTL_MAX

ENV_PREFIX = "IMDS_"
# Where the control API listens by default: next to the metadata service's 1338.
CONTROL_PORT = 1339


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs, validated. Build it with `load()`."""

    # Where to listen.
    host: str = "127.0.0.1"
    port: int = 1338
    # Who may talk to it, and how (docs/containers.md): several endpoints at once [N-01],
    # the token response's hop limit [N-05], per-caller roles, Host and client checks.
    listen: tuple[Endpoint, ...] = ()
    hop_limit: int = 1
    role_map: str = ""
    allow_client: tuple[str, ...] = ()
    allow_host: tuple[str, ...] = ()
    # Token and auth behaviour.
    http_tokens: str = "required"
    # The role and its rotation [L-01].
    role_name: str = "imds-local-role"
    credential_lifetime: int = 3600
    refresh_ahead: int = 300
    # A real role assumed through STS from the user's own credentials; empty: the embedded
    # local source. See docs/sts.md and `imds.sts_settings`.
    role_arn: tuple[str, ...] = ()
    role_session_name: str = ""
    external_id: str = ""
    duration: int = 3600
    policy_file: str = ""
    policy_arn: tuple[str, ...] = ()
    session_tag: tuple[str, ...] = ()
    source_identity: str = ""
    profile: str = ""
    sts_endpoint_url: str = ""
    check_trust: bool = False
    # The simulated instance [M-02] [M-03].
    account_id: str = "123456789012"
    region: str = "us-east-1"
    availability_zone: str = ""
    instance_id: str = ""
    instance_type: str = "m5.large"
    ami_id: str = "ami-0abcdef1234567890"
    private_ip: str = "172.31.16.10"
    mac: str = "0e:49:61:0f:c3:11"
    # The rest of the instance [M-*] [D-03] [U-01]; see docs/instance.md.
    availability_zone_id: str = ""
    architecture: str = "x86_64"
    public_ip: str = ""
    hostname: str = ""
    public_hostname: str = ""
    ipv6: str = ""
    security_groups: tuple[str, ...] = ("default",)
    network_interfaces: tuple[inst.InterfaceSpec, ...] = ()
    key_name: str = "imds-local-key"
    public_key: str = ""
    tags: tuple[inst.Tag, ...] = ()
    instance_metadata_tags: bool = False
    user_data: str = field(default="", repr=False)
    user_data_file: str = ""
    spot_instance_action: inst.SpotAction | None = None
    maintenance_events: tuple[inst.MaintenanceEvent, ...] = ()
    # [X-01] `iam/security-credentials-extended/` (with `AccountId`) is not on every instance.
    extended_credentials: bool = False
    # The identity key, its certificate and the generated instance id live here.
    state_dir: str = ""
    # Operations.
    log_level: str = "info"
    log_format: str = "text"
    # [N-04] every real response closes its connection; off lets clients keep it alive.
    connection_close: bool = True
    # What one client may hold (imds.httpd, docs/benchmarks.md): connections beyond the cap
    # close the longest idle one; a request must arrive complete within idle_timeout.
    max_connections: int = 1024
    idle_timeout: int = 5
    max_header_size: int = 8190
    max_headers: int = 64
    # The SDK's requests answered by imds.fastpath ahead of aiohttp (docs/benchmarks.md).
    fast_path: bool = True
    # The rotation lab's control API, metrics and timeline: a listener of its own, never
    # the metadata one (docs/rotation-lab.md). The port defaults to CONTROL_PORT, or to a
    # free one when a metadata port is (--port 0, --listen ADDR:0); the token, when not
    # given, is kept in the state dir.
    control: bool = True
    control_host: str = "127.0.0.1"
    control_port: int | None = None
    control_token: str = field(default="", repr=False)
    config_file: str = field(default="", metadata={"cli_only": True})
    # Derived by `finish()`: the user data bytes, read once at startup and never again
    # (no disk read on the request path); None when the instance has no user data [U-02].
    # Not an Option (the `cli_only` mark keeps it out of the option table).
    user_data_bytes: bytes | None = field(default=None, repr=False, metadata={"cli_only": True})

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


def _pattern(regex: str, what: str, flags: int = 0) -> Callable[[str], str]:
    compiled = re.compile(regex, flags)

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


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An empty value means "not set" (e.g. `IMDS_PUBLIC_IP=` for no public address)."""

    def wrapped(raw: str) -> Any:
        return "" if not str(raw).strip() else parse(raw)

    return wrapped


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its flag, environment variable and file key all come from `key`."""

    key: str
    parse: Callable[[Any], Any]
    help: str
    metavar: str | None = None
    # Given more than once (`--tag a=1 --tag b=2`); the field holds a tuple of parsed items.
    # In an `IMDS_*` variable items are separated by newlines or `;`.
    repeated: bool = False
    # A TOML table gives one KEY=VALUE item per entry (`tags = {Name = "web"}`).
    pairs: bool = False
    # `imds config` shows only the size (user data often carries secrets).
    masked: bool = False

    @property
    def is_flag(self) -> bool:
        """A true/false setting: `--flag` alone means true."""
        return self.parse is _bool

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


# IAM role names: [\w+=,.@-]{1,64}.
_ROLE_NAME = r"[\w+=,.@-]{1,64}"
# RoleSessionName and SourceIdentity as STS checks them (AssumeRole API reference; \w is
# ASCII there); ExternalId takes : and / too.
_STS_NAME = _pattern(r"[\w+=,.@-]{2,64}", "2-64 characters of letters, digits and +=,.@_-",
                     re.ASCII)
_EXTERNAL_ID = _pattern(r"[\w+=,.@:/-]{2,1224}",
                        "2-1224 characters of letters, digits and +=,.@:/_-", re.ASCII)

OPTIONS: tuple[Option, ...] = (
    Option("host", _text, "address to listen on", "ADDR"),
    Option("port", _int_range(0, 65535), "port to listen on; 0 picks a free one", "PORT"),
    Option("listen", parse_endpoint,
           "listen on ADDR[:PORT] or [IPv6][:PORT] instead of --host; repeatable, e.g. "
           "169.254.169.254:80 and [fd00:ec2::254]:80", "ADDR:PORT", repeated=True),
    Option("hop_limit", _int_range(HOP_LIMIT_MIN, HOP_LIMIT_MAX),
           "IP TTL / IPv6 hop limit of the token response, as EC2's "
           "HttpPutResponseHopLimit (1..64)", "N"),
    Option("role_map", _text,
           "TOML file mapping client addresses or CIDRs to role names or ARNs", "FILE"),
    Option("allow_client", parse_network,
           "serve only callers in this network (403 to others); repeatable", "CIDR",
           repeated=True),
    Option("allow_host", parse_host_name,
           "also accept this name in the Host header (IP literals and localhost always "
           "are; * turns the check off); repeatable", "NAME", repeated=True),
    Option(
        "http_tokens",
        _choice("required", "optional"),
        "required: IMDSv2 only (401 without a token); optional: IMDSv1 too",
        "MODE",
    ),
    Option("role_name", _pattern(_ROLE_NAME, "an IAM role name"),
           "role name to serve (ignored with --role-arn: the role's own name is served)",
           "NAME"),
    Option(
        "credential_lifetime",
        _int_range(1, 43200),
        "seconds each locally minted credential set is valid (ignored with --role-arn: "
        "see --duration)",
        "SECONDS",
    ),
    Option(
        "refresh_ahead",
        _int_range(0, TTL_MAX),
        "serve new credentials this many seconds before the old expire (at most half the "
        "lifetime)",
        "SECONDS",
    ),
    # Real credentials from STS (docs/sts.md). The options after role_arn need it.
    Option("role_arn", sts.role_arn,
           "serve this role's real credentials, assumed through STS with your own AWS "
           "credentials; repeat to chain (assume the first, from it the second, …)",
           "ARN", repeated=True),
    Option("role_session_name", _optional(_STS_NAME),
           "RoleSessionName (default: imds-<your user name>)", "NAME"),
    Option("external_id", _optional(_EXTERNAL_ID),
           "ExternalId for the last role's trust policy", "ID"),
    Option("duration", _int_range(sts.DURATION_MIN, sts.DURATION_MAX),
           "seconds each assumed-role session lasts (chained roles: at most 3600)", "SECONDS"),
    Option("policy_file", sts.policy_file,
           "JSON session policy that narrows the served session", "FILE"),
    Option("policy_arn", sts.policy_arn,
           "managed policy ARN as a session policy; repeatable", "ARN", repeated=True),
    Option("session_tag", sts.session_tag,
           "session tag KEY=VALUE on the served session; repeatable", "KEY=VALUE",
           repeated=True, pairs=True),
    Option("source_identity", _optional(_STS_NAME),
           "SourceIdentity set on the first AssumeRole (kept through the chain)", "NAME"),
    Option("profile", _text,
           "AWS profile whose credentials assume the role (default: the standard chain)",
           "NAME"),
    Option("sts_endpoint_url", sts.endpoint_url,
           "STS endpoint (default: the region's; e.g. LocalStack or moto)", "URL"),
    Option("check_trust", _bool,
           "at startup, read the role's trust policy and warn unless it trusts "
           "ec2.amazonaws.com", "BOOL"),
    Option("account_id", _pattern(r"\d{12}", "a 12-digit account id"), "AWS account id", "ID"),
    Option("region", _pattern(r"[a-z]{2}(-[a-z]+)+-\d", "a region like us-east-1"),
           "region of the instance; with --role-arn also the STS region called", "REGION"),
    Option(
        "availability_zone",
        _pattern(r"[a-z]{2}(-[a-z]+)+-\d[a-z]", "a zone like us-east-1a"),
        "availability zone (default: the region + 'a')",
        "ZONE",
    ),
    Option("instance_id", _pattern(r"i-[0-9a-f]{8,17}", "an id like i-0123456789abcdef0"),
           "instance id (default: generated once, kept in the state dir)", "ID"),
    Option("instance_type", _pattern(r"[a-z0-9-]+\.[a-z0-9]+", "a type like m5.large"),
           "instance type", "TYPE"),
    Option("ami_id", _pattern(r"ami-[0-9a-f]{8,17}", "an id like ami-0abc…"), "AMI id", "ID"),
    Option("private_ip", _ipv4, "private IPv4 address", "ADDR"),
    Option("mac", _pattern(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", "a MAC like 0e:49:61:0f:c3:11"),
           "MAC address of eth0", "MAC"),
    Option("availability_zone_id",
           _optional(_pattern(r"[a-z]{2,5}\d+-az\d+", "an id like use1-az1")),
           "availability zone id (default: derived from the zone)", "ID"),
    Option("architecture", _choice("x86_64", "arm64", "i386"),
           "architecture in the identity document", "ARCH"),
    Option("public_ip", _optional(_ipv4),
           "public IPv4 of eth0; public-ipv4 and public-hostname exist only with one", "ADDR"),
    Option("hostname", _optional(_pattern(r"[a-z0-9.-]+", "a DNS name")),
           "private DNS name (default: ip-A-B-C-D.<region domain>)", "NAME"),
    Option("public_hostname", _optional(_pattern(r"[a-z0-9.-]+", "a DNS name")),
           "public DNS name (default: ec2-A-B-C-D.<region domain>, with a public IP)", "NAME"),
    Option("ipv6", _optional(inst.ipv6), "IPv6 address of eth0 (default: none)", "ADDR"),
    Option("security_groups", _pattern(r"[\w .:/()#,@\[\]+=&;{}!$*-]{1,255}",
                                        "a security group name"),
           "security group name; repeat for several", "NAME", repeated=True),
    Option("network_interfaces", inst.interface,
           "an extra interface: mac=…,private-ip=…[,public-ip=…][,ipv6=…]; repeatable",
           "SPEC", repeated=True),
    Option("key_name", _pattern(r"[\x20-\x7e]{1,255}", "a key pair name"),
           "key pair name shown in public-keys/", "NAME"),
    Option("public_key", inst.openssh_key,
           "OpenSSH public key line; public-keys/ exists only with one", "KEY"),
    Option("tags", inst.tag, "instance tag KEY=VALUE; repeatable", "KEY=VALUE",
           repeated=True, pairs=True),
    Option("instance_metadata_tags", _bool,
           "expose tags under meta-data/tags/instance (EC2 default: off)", "BOOL"),
    Option("user_data", _text, "user data, inline text", "TEXT", masked=True),
    Option("user_data_file", _text, "user data read (as bytes) from this file at startup",
           "FILE"),
    Option("spot_instance_action", inst.spot_action,
           "pending Spot interruption: terminate|stop|hibernate[@TIME]", "ACTION[@TIME]"),
    Option("maintenance_events", inst.maintenance_event,
           "a maintenance event CODE[,state=…][,not-before=TIME][,not-after=TIME]; repeatable",
           "EVENT", repeated=True),
    Option("extended_credentials", _bool,
           "also serve iam/security-credentials-extended/ with AccountId", "BOOL"),
    Option("state_dir", _text,
           "directory for the identity key, certificate and instance id "
           "(default: $XDG_STATE_HOME/imds or ~/.local/state/imds)", "DIR"),
    Option("log_level", _choice("debug", "info", "warning", "error"), "log level", "LEVEL"),
    Option("log_format", _choice("text", "json"), "log line format", "FORMAT"),
    Option(
        "connection_close",
        _bool,
        "close every connection after its response, as EC2 does (true|false)",
        "BOOL",
    ),
    Option("max_connections", _int_range(1, 1_000_000),
           "open connections kept at most; past it the longest idle one is closed, so a "
           "new client is always served", "N"),
    Option("idle_timeout", _int_range(1, 3600),
           "seconds a connection may wait for a complete request (idle or trickling "
           "headers) before it is closed", "SECONDS"),
    Option("max_header_size", _int_range(256, 65536),
           "longest request line, header name or header value, in bytes; longer ones "
           "get 400", "BYTES"),
    Option("max_headers", _int_range(1, 1024),
           "most headers a request may carry; more get 400", "N"),
    Option("fast_path", _bool,
           "answer plain token PUTs and metadata GETs on a lean HTTP path in front of "
           "aiohttp (on Linux, from a deferred accept loop), which still takes every "
           "other request (true|false)", "BOOL"),
    Option("control", _bool,
           "serve the control API, /metrics and the timeline page on their own listener",
           "BOOL"),
    Option("control_host", _text, "address of the control listener", "ADDR"),
    Option("control_port", _int_range(0, 65535),
           f"port of the control listener (default {CONTROL_PORT}, or a free one when "
           "the metadata port is one: --port 0, --listen ADDR:0); 0 picks a free one",
           "PORT"),
    Option("control_token", _text,
           "bearer token of the control API (default: generated once and kept in "
           "state_dir/control-token, mode 0600)", "TOKEN", masked=True),
)

_BY_KEY = {option.key: option for option in OPTIONS}


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


def _env_items(raw: str) -> list[str]:
    """A repeatable setting in one variable: items separated by newlines or `;`."""
    return [item.strip() for item in re.split(r"[;\n]", raw) if item.strip()]


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
        # (`imds.instance.resolve`), so loading a configuration writes nothing.
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
        from imds import rolemap

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
    if config.account_id == Config.__dataclass_fields__["account_id"].default:
        # On EC2 an instance profile's role lives in the instance's account, so unless an
        # account is asked for, the simulated instance belongs to the served role's.
        changes["account_id"] = sts.split_role_arn(config.role_arn[-1])[1]
    return changes


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
