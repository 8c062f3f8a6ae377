"""
The option table: every setting declared once, with its parser, help text and TOML type.
The command line flags, the `IMDS_*` variables and the config file keys are all derived
from `OPTIONS`, so the three can never disagree. Parsers raise ValueError; loading turns
that into a ConfigError naming the setting.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any

from imds.config import containers as ctr
from imds.config import instance as inst
from imds.config import sts
from imds.config.endpoints import parse_endpoint, parse_host
from imds.config.model import CONTROL_PORT, DEFAULT_ACCOUNT_ID, ENV_PREFIX, Config
from imds.ec2.guard import parse_host_name, parse_network
from imds.ec2.wire import HOP_LIMIT_MAX, HOP_LIMIT_MIN

# The bounds of the rotation settings, one copy for the options, the control API and the
# lab: a credential lifetime up to STS's longest session, and a refresh at most six hours
# ahead of expiry (no credential set lasts long enough to need more).
LIFETIME_RANGE = (1, sts.DURATION_MAX)
REFRESH_AHEAD_RANGE = (0, 6 * 3600)

# ---------------------------------------------------------------------------- parsers


@dataclass(frozen=True, slots=True)
class _IntRange:
    """A whole number in low..high (a class, so the TOML check knows it wants an integer)."""

    low: int
    high: int

    def __call__(self, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if not self.low <= value <= self.high:
            raise ValueError(f"expected {self.low}..{self.high}, got {value}")
        return value


def _int_range(low: int, high: int) -> Callable[[str], int]:
    return _IntRange(low, high)


@dataclass(frozen=True, slots=True)
class _Seconds:
    """Seconds, fractions allowed, in low..high (a class: TOML takes a float for it)."""

    low: float
    high: float

    def __call__(self, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {raw!r}") from None
        if not self.low <= value <= self.high:  # NaN fails this too
            raise ValueError(f"expected {self.low:g}..{self.high:g} seconds, got {raw}")
        return value


def _seconds(low: float, high: float) -> Callable[[str], float]:
    return _Seconds(low, high)


@dataclass(frozen=True, slots=True)
class _Choice:
    """One of a few words (a class, so `--help` can list them)."""

    choices: tuple[str, ...]

    def __call__(self, raw: str) -> str:
        value = raw.strip().lower()
        if value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {raw!r}")
        return value


def _choice(*choices: str) -> Callable[[str], str]:
    return _Choice(choices)


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


def _path(raw: str) -> str:
    """A file or directory path: any text the OS takes as one (so no NUL; TOML allows it)."""
    if "\0" in raw:
        raise ValueError(f"expected a path, got {raw!r} (it has a NUL character)")
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
    # A URL: `imds config` shows a password in it as `****` (imds.config.sts.mask_url).
    url: bool = False
    # A TOML table gives one item as its fields (`[[network_interfaces]]`).
    table: bool = False
    # The default, said in words, when it is computed rather than a Config field's value
    # ("the region + 'a'"); otherwise `--help` shows the Config field's default.
    default_text: str = ""
    # The `--help` heading it is listed under (one of GROUPS); set by `_group`.
    group: str = ""

    @property
    def is_flag(self) -> bool:
        """A true/false setting: `--flag` alone means true."""
        return self.parse is _bool

    @property
    def toml_type(self) -> str:
        """The TOML type of one value of this setting (a string is always accepted too)."""
        if self.is_flag:
            return "boolean"
        if isinstance(self.parse, _Seconds):
            return "float"
        return "integer" if isinstance(self.parse, _IntRange) else "string"

    @property
    def choices(self) -> tuple[str, ...]:
        """The words it takes, when it takes only a few (shown as `{a,b}` in `--help`)."""
        if self.is_flag:
            return ("true", "false")
        return self.parse.choices if isinstance(self.parse, _Choice) else ()

    @property
    def default(self) -> str:
        """
        The default as `--help` shows it: the Config field's default, or how it is computed,
        or "none". A secret's default value is never shown.
        """
        if self.default_text:
            return self.default_text
        value = _DEFAULTS.get(self.key)
        if self.masked or value is None or value in ("", ()):
            return "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ", ".join(str(item) for item in value)
        return str(value)

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


# RoleSessionName and SourceIdentity as STS checks them (AssumeRole API reference; \w is
# ASCII there); ExternalId takes : and / too.
_STS_NAME = _pattern(r"[\w+=,.@-]{2,64}", "2-64 characters of letters, digits and +=,.@_-",
                     re.ASCII)
_EXTERNAL_ID = _pattern(r"[\w+=,.@:/-]{2,1224}",
                        "2-1224 characters of letters, digits and +=,.@:/_-", re.ASCII)

# The `--help` headings, in the order they are listed.
SERVER = "server"
CREDENTIALS = "credentials and STS"
INSTANCE = "instance"
CONTAINERS = "containers"
CONTAINER_CREDENTIALS = "ECS task roles and EKS Pod Identity"
LIMITS = "limits"
LAB = "lab"
GROUPS = (SERVER, CREDENTIALS, INSTANCE, CONTAINERS, CONTAINER_CREDENTIALS, LIMITS, LAB)


def _group(title: str, *options: Option) -> tuple[Option, ...]:
    return tuple(replace(option, group=title) for option in options)


_NONE_LOCAL = "none: locally minted credentials"

# The table keeps its historical order (`imds config` lists settings in it); the groups
# only decide where `--help` lists each.
OPTIONS: tuple[Option, ...] = (
    *_group(
        SERVER,
        Option("host", parse_host, "address to listen on", "ADDR"),
        Option("port", _int_range(0, 65535), "port to listen on; 0 picks a free one", "PORT"),
    ),
    *_group(
        CONTAINERS,
        Option("listen", parse_endpoint,
               "listen on ADDR[:PORT] or [IPv6][:PORT] instead of --host; repeatable, e.g. "
               "169.254.169.254:80 and [fd00:ec2::254]:80", "ADDR:PORT", repeated=True,
               default_text="none: --host and --port"),
        Option("hop_limit", _int_range(HOP_LIMIT_MIN, HOP_LIMIT_MAX),
               "IP TTL / IPv6 hop limit of the token response, as EC2's "
               f"HttpPutResponseHopLimit ({HOP_LIMIT_MIN}..{HOP_LIMIT_MAX})", "N"),
        Option("role_map", _path,
               "TOML file mapping client addresses or CIDRs to role names or ARNs; read "
               "again when it changes", "FILE",
               default_text="none: every client gets the one role"),
        Option("reload_interval", _seconds(0, 3600),
               "seconds between checks of --role-map and --pod-identity-associations for a "
               "new version (a ConfigMap update); 0: read once", "SECONDS"),
        Option("allow_client", parse_network,
               "serve only callers in this network (403 to others); repeatable", "CIDR",
               repeated=True, default_text="none: every caller"),
        Option("allow_host", parse_host_name,
               "also accept this name in the Host header (IP literals and localhost always "
               "are; * turns the check off); repeatable", "NAME", repeated=True),
    ),
    *_group(
        SERVER,
        Option("http_tokens", _choice("required", "optional"),
               "required: IMDSv2 only (401 without a token); optional: IMDSv1 too", "MODE"),
    ),
    *_group(
        CREDENTIALS,
        Option("role_name", sts.role_name,
               "role name to serve (ignored with --role-arn: the role's own name is served)",
               "NAME"),
        Option("credential_lifetime", _int_range(*LIFETIME_RANGE),
               "seconds each locally minted credential set is valid "
               f"({LIFETIME_RANGE[0]}..{LIFETIME_RANGE[1]}; ignored with --role-arn: see "
               "--duration)", "SECONDS"),
        Option("refresh_ahead", _int_range(*REFRESH_AHEAD_RANGE),
               "serve new credentials this many seconds before the old expire (at most half "
               "the lifetime)", "SECONDS"),
        # Real credentials from STS (docs/sts.md). The options after role_arn need it.
        Option("role_arn", sts.role_arn,
               "serve this role's real credentials, assumed through STS with your own AWS "
               "credentials; repeat to chain (assume the first, from it the second, …)",
               "ARN", repeated=True, default_text=_NONE_LOCAL),
        Option("role_session_name", _optional(_STS_NAME), "RoleSessionName", "NAME",
               default_text="imds-<your user name>"),
        Option("external_id", _optional(_EXTERNAL_ID),
               "ExternalId for the last role's trust policy", "ID"),
        Option("duration", _int_range(sts.DURATION_MIN, sts.DURATION_MAX),
               "seconds each assumed-role session lasts (chained roles: at most 3600)",
               "SECONDS"),
        Option("policy_file", sts.policy_file,
               "JSON session policy that narrows the served session", "FILE"),
        Option("policy_arn", sts.policy_arn,
               "managed policy ARN as a session policy; repeatable", "ARN", repeated=True),
        Option("session_tag", sts.session_tag,
               "session tag KEY=VALUE on the served session; repeatable", "KEY=VALUE",
               repeated=True, pairs=True),
        Option("source_identity", _optional(_STS_NAME),
               "SourceIdentity set on the first AssumeRole (kept through the chain)", "NAME"),
        Option("profile", _text, "AWS profile whose credentials assume the role", "NAME",
               default_text="the standard credential chain"),
        Option("sts_endpoint_url", sts.endpoint_url,
               "STS endpoint, e.g. LocalStack or moto", "URL", url=True,
               default_text="the region's"),
        Option("check_trust", _bool,
               "at startup, read the role's trust policy and warn unless it trusts "
               "ec2.amazonaws.com", "BOOL"),
    ),
    *_group(
        INSTANCE,
        Option("account_id", _pattern(r"\d{12}", "a 12-digit account id"), "AWS account id",
               "ID", default_text=f"the role ARN's account, else {DEFAULT_ACCOUNT_ID}"),
        Option("region", _pattern(r"[a-z]{2}(-[a-z]+)+-\d", "a region like us-east-1"),
               "region of the instance; with --role-arn also the STS region called",
               "REGION"),
        Option("availability_zone",
               _pattern(r"[a-z]{2}(-[a-z]+)+-\d[a-z]", "a zone like us-east-1a"),
               "availability zone", "ZONE", default_text="the region + 'a'"),
        Option("instance_id", _pattern(r"i-[0-9a-f]{8,17}", "an id like i-0123456789abcdef0"),
               "instance id", "ID", default_text="generated once, kept in the state dir"),
        Option("instance_type", _pattern(r"[a-z0-9-]+\.[a-z0-9]+", "a type like m5.large"),
               "instance type", "TYPE"),
        Option("ami_id", _pattern(r"ami-[0-9a-f]{8,17}", "an id like ami-0abc…"), "AMI id",
               "ID"),
        Option("private_ip", _ipv4, "private IPv4 address", "ADDR"),
        Option("mac", _pattern(r"([0-9a-f]{2}:){5}[0-9a-f]{2}",
                               "a MAC like 0e:49:61:0f:c3:11"),
               "MAC address of eth0", "MAC"),
        Option("availability_zone_id",
               _optional(_pattern(r"[a-z]{2,5}\d+-az\d+", "an id like use1-az1")),
               "availability zone id", "ID", default_text="derived from the zone"),
        Option("architecture", _choice("x86_64", "arm64", "i386"),
               "architecture in the identity document", "ARCH"),
        Option("public_ip", _optional(_ipv4),
               "public IPv4 of eth0; public-ipv4 and public-hostname exist only with one",
               "ADDR"),
        Option("hostname", _optional(_pattern(r"[a-z0-9.-]+", "a DNS name")),
               "private DNS name", "NAME", default_text="ip-A-B-C-D.<region domain>"),
        Option("public_hostname", _optional(_pattern(r"[a-z0-9.-]+", "a DNS name")),
               "public DNS name", "NAME",
               default_text="ec2-A-B-C-D.<region domain>, with a public IP"),
        Option("ipv6", _optional(inst.ipv6), "IPv6 address of eth0", "ADDR"),
        Option("security_groups", _pattern(r"[\w .:/()#,@\[\]+=&;{}!$*-]{1,255}",
                                            "a security group name"),
               "security group name; repeat for several", "NAME", repeated=True),
        Option("network_interfaces", inst.interface,
               "an extra interface: mac=…,private-ip=…[,public-ip=…][,ipv6=…]; repeatable",
               "SPEC", repeated=True, table=True),
        Option("key_name", _pattern(r"[\x20-\x7e]{1,255}", "a key pair name"),
               "key pair name shown in public-keys/", "NAME"),
        Option("public_key", inst.openssh_key,
               "OpenSSH public key line; public-keys/ exists only with one", "KEY"),
        Option("tags", inst.tag, "instance tag KEY=VALUE; repeatable", "KEY=VALUE",
               repeated=True, pairs=True),
        Option("instance_metadata_tags", _bool,
               "expose tags under meta-data/tags/instance (EC2's default is off too)", "BOOL"),
        Option("user_data", _text, "user data, inline text", "TEXT", masked=True),
        Option("user_data_file", _path, "user data read (as bytes) from this file at startup",
               "FILE"),
        Option("spot_instance_action", inst.spot_action,
               "pending Spot interruption: terminate|stop|hibernate[@TIME]", "ACTION[@TIME]"),
        Option("maintenance_events", inst.maintenance_event,
               "a maintenance event CODE[,state=…][,not-before=TIME][,not-after=TIME]; "
               "repeatable", "EVENT", repeated=True, table=True),
        Option("extended_credentials", _bool,
               "also serve iam/security-credentials-extended/ with AccountId", "BOOL"),
    ),
    *_group(
        SERVER,
        Option("state_dir", _path,
               "directory for the identity key, certificate and instance id", "DIR",
               default_text="$XDG_STATE_HOME/imds, else ~/.local/state/imds"),
        Option("log_level", _choice("debug", "info", "warning", "error"), "log level",
               "LEVEL"),
        Option("log_format", _choice("text", "json"), "log line format", "FORMAT"),
    ),
    *_group(
        CONTAINER_CREDENTIALS,
        Option("ecs_task", ctr.ecs_task,
               "serve ROLE (a name, minted locally, or an ARN, assumed with STS) at "
               "/v2/credentials/TASK_ID, as the ECS agent does; repeatable", "TASK_ID=ROLE",
               repeated=True, pairs=True,
               default_text="the server's own role, under the id in state_dir/ecs-task-id"),
        Option("container_token", ctr.container_token,
               "the Authorization token the ECS full-URI flow must send "
               "(AWS_CONTAINER_AUTHORIZATION_TOKEN)", "TOKEN", masked=True,
               default_text="generated once, kept in state_dir/container-token (mode 0600)"),
        Option("pod_identity_association", ctr.association,
               "EKS Pod Identity: the role for a service account; repeatable",
               "NAMESPACE/SERVICE_ACCOUNT=ROLE", repeated=True, pairs=True,
               default_text="none: every service account gets the server's own role"),
        Option("pod_identity_associations", _path,
               "file of NAMESPACE/SERVICE_ACCOUNT=ROLE lines (# comments), instead of "
               "--pod-identity-association; read again when it changes", "FILE",
               default_text="none"),
        Option("pod_identity_keys", _path,
               "public keys of the cluster's service-account issuer (JWKS or PEM) that sign "
               "Pod Identity tokens; repeatable", "FILE", repeated=True,
               default_text="the key imds pod-token signs with (state_dir/pod-identity-key.pem)"),
        Option("cluster_name", _pattern(r"[0-9A-Za-z][A-Za-z0-9_-]{0,99}",
                                        "an EKS cluster name"),
               "EKS cluster name, in the eks-cluster-* session tags", "NAME"),
        Option("pod_identity_rate", _int_range(0, 1_000_000),
               "Pod Identity requests a second before 429 answers; 0: no limit", "N"),
    ),
    *_group(
        LIMITS,
        Option("connection_close", _bool,
               "close every connection after its response, as EC2 does", "BOOL"),
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
               "other request", "BOOL"),
    ),
    *_group(
        LAB,
        Option("control", _bool,
               "serve the control API, /metrics and the timeline page on their own listener",
               "BOOL"),
        Option("control_host", parse_host, "address of the control listener", "ADDR"),
        Option("control_port", _int_range(0, 65535),
               "port of the control listener; 0 picks a free one", "PORT",
               default_text=f"{CONTROL_PORT}, or a free one when the metadata port is free "
                            "(--port 0, --listen ADDR:0)"),
        Option("control_token", _text, "bearer token of the control API", "TOKEN",
               masked=True,
               default_text="generated once, kept in state_dir/control-token (mode 0600)"),
    ),
)

# The defaults `--help` shows (Option.default): the Config fields', one source of truth.
_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(Config) if f.default is not MISSING
}

_BY_KEY = {option.key: option for option in OPTIONS}


