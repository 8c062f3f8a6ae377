"""
The one frozen configuration: every setting of `imds serve` as a typed field, with the
defaults a user gets without configuring anything. Built only by imds.config.load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imds.config import instance as inst
from imds.config.endpoints import Endpoint

ENV_PREFIX = "IMDS_"
# Where the control API listens by default: next to the metadata service's 1338.
CONTROL_PORT = 1339
# The simulated instance's account when none is set and no role ARN names one.
DEFAULT_ACCOUNT_ID = "123456789012"


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
    # Seconds between checks of the role map and associations files (imds.config.watch).
    reload_interval: float = 2.0
    allow_client: tuple[str, ...] = ()
    allow_host: tuple[str, ...] = ()
    # Token and auth behaviour.
    http_tokens: str = "required"
    # The role and its rotation [L-01].
    role_name: str = "imds-local-role"
    credential_lifetime: int = 3600
    refresh_ahead: int = 300
    # A real role assumed through STS from the user's own credentials; empty: the embedded
    # local source. See docs/sts.md and `imds.config.sts`.
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
    # The simulated instance [M-02] [M-03]. "" (unset) until `finish()`: then the served
    # role ARN's account, else DEFAULT_ACCOUNT_ID; a value that was set always stays.
    account_id: str = ""
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
    # Container credential endpoints (docs/container-credentials.md) [K-01] [K-06]: ECS task
    # ids and EKS Pod Identity associations ("ID=ROLE", "NAMESPACE/SERVICE_ACCOUNT=ROLE"),
    # the full-URI token (""; generated and kept in the state dir), the cluster issuer's keys
    # (none: the state dir's own) and the Pod Identity rate limit (0: none).
    ecs_task: tuple[str, ...] = ()
    container_token: str = field(default="", repr=False)
    pod_identity_association: tuple[str, ...] = ()
    pod_identity_associations: str = ""
    pod_identity_keys: tuple[str, ...] = ()
    cluster_name: str = "imds-local"
    pod_identity_rate: int = 0
    # The identity key, its certificate and the generated instance id live here.
    state_dir: str = ""
    # Operations.
    log_level: str = "info"
    log_format: str = "text"
    # [N-04] every real response closes its connection; off lets clients keep it alive.
    connection_close: bool = True
    # What one client may hold (imds.http.aioserver, docs/benchmarks.md): connections beyond the cap
    # close the longest idle one; a request must arrive complete within idle_timeout.
    max_connections: int = 1024
    idle_timeout: int = 5
    max_header_size: int = 8190
    max_headers: int = 64
    # The SDK's requests answered by imds.http.fastpath ahead of aiohttp (docs/benchmarks.md).
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
    # Session tag keys passed on to roles the session assumes in turn; set (not an Option)
    # for EKS Pod Identity sessions, whose tags are all transitive (imds.containers).
    transitive_tag_keys: tuple[str, ...] = field(default=(), metadata={"cli_only": True})

    @property
    def zone(self) -> str:
        return self.availability_zone or f"{self.region}a"


