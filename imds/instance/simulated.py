"""
The simulated instance: its metadata tree, built once at startup from the configuration,
the role's rotator and the identity signer.

Everything that can be rendered ahead is rendered here (the identity document and its
signatures, listings' leaves, user data), so a request only walks dicts and hands out
bytes. Only credentials are produced per request, from documents rendered per generation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Callable
from pathlib import Path

from imds.config import INSTANCE_ID_FILE, Config, saved_instance_id
from imds.config.instance import SpotAction
from imds.creds.model import (
    Rendered,
    identity_info_document,
    info_document,
    unauthorized_document,
)
from imds.creds.rotation import Rotator, effective_ahead
from imds.creds.sources.local import LocalSource
from imds.ec2.tree import Directory, Leaf, leaf
from imds.ec2.wire import OCTET_STREAM, VERSIONS, from_epoch, iso8601
from imds.errors import StartupError
from imds.instance.documents import events_document, identity_document, spot_action_document
from imds.instance.identity import IdentitySigner, load_or_create
from imds.instance.network import (
    Interface,
    interfaces,
    local_hostname,
    partition,
    stable_hex,
    zone_id,
)
from imds.instance.statedir import locked, write_once

__all__ = ["SimulatedInstance", "build_tree", "credential_tree", "identity_document",
           "local_hostname", "resolve", "zone_id"]

# [M-06] the role every instance has, whatever its instance profile.
IDENTITY_ROLE = "ec2-instance"
# [M-08] EC2 gives a Spot instance two minutes' notice.
SPOT_NOTICE = dt.timedelta(minutes=2)
# [M-02] what a Nitro instance shows for these; nothing configures them.
_VHOSTMD = '<?xml version="1.0" encoding="UTF-8"?>'


def resolve(config: Config) -> Config:
    """
    The configuration with its instance id fixed: the configured one, the one saved in the
    state directory by an earlier start, or a new one saved there now.
    """
    if config.instance_id:
        return config
    new = "i-0" + secrets.token_hex(8)
    try:
        # Locked and checked (imds.instance.statedir): servers starting at once keep one id.
        with locked(config.state_dir) as directory:
            write_once(directory / INSTANCE_ID_FILE, new.encode("ascii"), 0o644)
    except OSError as exc:
        raise StartupError(f"state directory {config.state_dir!r}: {exc.strerror or exc}") \
            from exc
    saved = saved_instance_id(config.state_dir)
    if not saved:
        raise StartupError(f"{Path(config.state_dir) / INSTANCE_ID_FILE} does not hold an "
                           "instance id; delete it to get a new one")
    return dataclasses.replace(config, instance_id=saved)


# ------------------------------------------------------------------------ credentials


def credential_tree(
    rotator: Rotator, clock: Callable[[], float], *, extended: bool = False
) -> Directory:
    """`iam/`: the instance profile and its role's rotating credentials [C-01..C-06] [X-01]."""
    role = rotator.source.role

    def credentials(pick: Callable[[Rendered], bytes]) -> Callable[[], bytes]:
        def produce() -> bytes:
            now = clock()
            current = rotator.valid(now)
            if current is not None:
                return pick(current)
            # No valid credentials (the source has failed past their expiry): EC2's answer
            # when it cannot assume the instance role [C-06].
            return unauthorized_document(role.name, from_epoch(now))

        return produce

    def info() -> bytes:
        current = rotator.current
        updated = current.credentials.issued if current else from_epoch(clock())
        return info_document(updated, role.instance_profile_arn, role.instance_profile_id)

    children: dict[str, Leaf | Directory] = {
        "info": Leaf(info),
        "security-credentials": Directory(
            {role.name: Leaf(credentials(lambda r: r.document))}
        ),
    }
    if extended:
        # same documents plus AccountId; clients fall back to the legacy path on 404.
        children["security-credentials-extended"] = Directory(
            {role.name: Leaf(credentials(lambda r: r.extended_document))}
        )
    return Directory(children)


class IdentityCredentials:
    """
    [M-06] credentials of the instance identity role `ec2-instance`, which every instance
    has. Minted locally (SDK credential chains never read them) and replaced, like the
    role's, `refresh_ahead` before they expire; minting is a few random bytes and no I/O,
    so it happens inline on the first request past that point.
    """

    def __init__(self, config: Config, clock: Callable[[], float]) -> None:
        self._source = LocalSource(IDENTITY_ROLE, config.account_id,
                                   config.credential_lifetime, clock)
        self._account_id = config.account_id
        self._ahead = effective_ahead(config.refresh_ahead, config.credential_lifetime)
        self._clock = clock
        self._current = self._mint()

    def _mint(self) -> Rendered:
        return Rendered.of(self._source.mint(), self._account_id)

    def current(self) -> Rendered:
        current = self._current
        if self._clock() >= current.expires_at - self._ahead:
            current = self._current = self._mint()
        return current

    def tree(self) -> Directory:
        return Directory({
            "ec2": Directory({
                "info": Leaf(lambda: identity_info_document(
                    self.current().credentials.issued, self._account_id)),
                "security-credentials": Directory({
                    IDENTITY_ROLE: Leaf(lambda: self.current().document),
                }),
            }),
        })


def spot_tree(spot: SpotAction, started: dt.datetime) -> Directory:
    """[M-08] `spot/instance-action` and, for terminations, `spot/termination-time`."""
    when = spot.time or started.replace(microsecond=0) + SPOT_NOTICE
    children: dict[str, Leaf | Directory] = {
        "instance-action": Leaf(spot_action_document(spot.action, when)),
    }
    if spot.action == "terminate":
        children["termination-time"] = leaf(iso8601(when))
    return Directory(children)


# ------------------------------------------------------------------------------ tree


def _interface_tree(nic: Interface) -> Directory:
    """[M-04] `network/interfaces/macs/<mac>/`; public and IPv6 items only when they apply."""
    children: dict[str, Leaf | Directory] = {
        "device-number": leaf(str(nic.device_number)),
        "interface-id": leaf(nic.interface_id),
        "local-hostname": leaf(nic.local_hostname),
        "local-ipv4s": leaf(nic.private_ip),
        "mac": leaf(nic.mac),
        "network-card-index": leaf("0"),
        "owner-id": leaf(nic.owner_id),
        "security-group-ids": leaf("\n".join(nic.security_group_ids)),
        "security-groups": leaf("\n".join(nic.security_groups)),
        "subnet-id": leaf(nic.subnet_id),
        "subnet-ipv4-cidr-block": leaf(nic.subnet_cidr),
        "vpc-id": leaf(nic.vpc_id),
        "vpc-ipv4-cidr-block": leaf(nic.vpc_cidr),
        "vpc-ipv4-cidr-blocks": leaf(nic.vpc_cidr),
    }
    if nic.public_ip:
        children["ipv4-associations"] = Directory({nic.public_ip: leaf(nic.private_ip)})
        children["public-hostname"] = leaf(nic.public_hostname)
        children["public-ipv4s"] = leaf(nic.public_ip)
    if nic.ipv6:
        children["ipv6s"] = leaf(nic.ipv6)
        children["subnet-ipv6-cidr-blocks"] = leaf(nic.subnet_ipv6_cidr)
        children["vpc-ipv6-cidr-blocks"] = leaf(nic.vpc_ipv6_cidr)
    return Directory(children)


def _meta_data(config: Config, rotator: Rotator, clock: Callable[[], float],
               started: dt.datetime, identity: IdentityCredentials) -> Directory:
    nics = interfaces(config)
    eth0 = nics[0]
    zone = config.zone
    partition_name, domain = partition(config.region)
    children: dict[str, Leaf | Directory] = {
        "ami-id": leaf(config.ami_id),
        "ami-launch-index": leaf("0"),
        "ami-manifest-path": leaf("(unknown)"),
        "block-device-mapping": Directory({"ami": leaf("/dev/xvda"),
                                           "root": leaf("/dev/xvda")}),
        "events": Directory({
            "maintenance": Directory({
                "history": Leaf(events_document(
                    (e for e in config.maintenance_events if e.state != "active"),
                    config.instance_id, started)),
                "scheduled": Leaf(events_document(
                    (e for e in config.maintenance_events if e.state == "active"),
                    config.instance_id, started)),
            }),
        }),
        "hostname": leaf(eth0.local_hostname),
        "iam": credential_tree(rotator, clock, extended=config.extended_credentials),
        "identity-credentials": identity.tree(),
        "instance-action": leaf("none"),
        "instance-id": leaf(config.instance_id),
        "instance-life-cycle": leaf("spot" if config.spot_instance_action else "on-demand"),
        "instance-type": leaf(config.instance_type),
        "local-hostname": leaf(eth0.local_hostname),
        "local-ipv4": leaf(config.private_ip),
        "mac": leaf(config.mac),
        "metrics": Directory({"vhostmd": leaf(_VHOSTMD)}),
        "network": Directory({"interfaces": Directory({
            "macs": Directory({nic.mac: _interface_tree(nic) for nic in nics}),
        })}),
        "placement": Directory({
            "availability-zone": leaf(zone),
            "availability-zone-id": leaf(config.availability_zone_id or zone_id(zone)),
            "region": leaf(config.region),
        }),
        "profile": leaf("default-hvm"),
        "reservation-id": leaf("r-" + stable_hex("reservation", config.instance_id)),
        "security-groups": leaf("\n".join(config.security_groups)),
        "services": Directory({"domain": leaf(domain), "partition": leaf(partition_name)}),
        "system": leaf("nitro"),
    }
    # [M-02] present only when the instance has them.
    if config.public_ip:
        children["public-ipv4"] = leaf(config.public_ip)
        children["public-hostname"] = leaf(eth0.public_hostname)
    if config.ipv6:
        children["ipv6"] = leaf(config.ipv6)
    if config.public_key:
        # [M-07] `public-keys/` lists `0=<key name>`; `public-keys/0/` lists `openssh-key`.
        children["public-keys"] = Directory(
            {"0": Directory({"openssh-key": leaf(config.public_key)})},
            labels={"0": f"0={config.key_name}"},
        )
    if config.spot_instance_action:
        children["spot"] = spot_tree(config.spot_instance_action, started)
    if config.instance_metadata_tags:
        # [M-11] only with InstanceMetadataTags enabled (EC2's default is disabled).
        children["tags"] = Directory({"instance": Directory(
            {tag.key: leaf(tag.value) for tag in config.tags})})
    return Directory(children)


def identity_tree(signer: IdentitySigner, config: Config, started: dt.datetime) -> Directory:
    """[D-01] [D-02] `dynamic/`: the identity document, signed once, and fws."""
    signed = signer.sign(identity_document(config, started))
    return Directory({
        "fws": Directory({"instance-monitoring": leaf("disabled")}),
        "instance-identity": Directory({
            "document": Leaf(signed.document),
            "pkcs7": Leaf(signed.pkcs7),
            "rsa2048": Leaf(signed.rsa2048),
            "signature": Leaf(signed.signature),
        }),
    })


class SimulatedInstance:
    """
    One instance, prepared once at startup: its id fixed, its identity document signed,
    its identity credentials minted. `tree(rotator)` then gives the metadata tree for a
    role; with per-caller roles (`--role-map`) every tree shares all of this.

    Reads and, the first time, writes the state directory (instance id, identity key):
    build it at startup, never per request.
    """

    def __init__(self, config: Config, clock: Callable[[], float], started: dt.datetime,
                 *, signer: IdentitySigner | None = None) -> None:
        self.config = config = resolve(config)
        self._clock = clock
        self._started = started
        self.signer = signer or load_or_create(config.state_dir)
        self._dynamic = identity_tree(self.signer, config, started)
        self._identity = IdentityCredentials(config, clock)

    def tree(self, rotator: Rotator) -> Directory:
        """The whole tree below `/`: every version prefix serves the same one [N-06]."""
        config = self.config
        children: dict[str, Leaf | Directory] = {
            "dynamic": self._dynamic,
            "meta-data": _meta_data(config, rotator, self._clock, self._started,
                                    self._identity),
        }
        if config.user_data_bytes is not None:
            # [U-01] the raw bytes as given, application/octet-stream; [N-07] [U-02] absent
            # (404, not listed) without user data.
            children["user-data"] = Leaf(config.user_data_bytes, OCTET_STREAM)
        version = Directory(children, mark_directories=False)
        return Directory(dict.fromkeys(VERSIONS, version), mark_directories=False)


def build_tree(
    config: Config,
    rotator: Rotator,
    clock: Callable[[], float],
    started: dt.datetime,
    *,
    signer: IdentitySigner | None = None,
) -> Directory:
    """The tree of a one-role instance (see `SimulatedInstance`)."""
    return SimulatedInstance(config, clock, started, signer=signer).tree(rotator)
