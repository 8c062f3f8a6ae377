"""
The simulated instance: its metadata tree, built from the configuration and the role.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

from imds.config import Config
from imds.credentials import info_document, unauthorized_document
from imds.metadata import Directory, Leaf, leaf
from imds.protocol import VERSIONS, from_epoch, iso8601
from imds.rotation import Rotator

_DIRECTIONS = {
    "north": "n", "south": "s", "east": "e", "west": "w", "central": "c",
    "northeast": "ne", "southeast": "se", "northwest": "nw", "southwest": "sw",
}


def zone_id(zone: str) -> str:
    """`us-east-1a` -> `use1-az1`, the shape of real zone ids [M-03]."""
    area, direction, number = zone[:-1].split("-", 2)
    letter = zone[-1]
    short = _DIRECTIONS.get(direction, direction[:1])
    return f"{area}{short}{number}-az{ord(letter) - ord('a') + 1}"


def local_hostname(ip: str, region: str) -> str:
    # [M-02] us-east-1 keeps its historical domain; other regions use <region>.compute.internal.
    domain = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return f"ip-{ip.replace('.', '-')}.{domain}"


def credential_tree(rotator: Rotator, clock: Callable[[], float]) -> Directory:
    """`iam/`: the instance profile and its role's rotating credentials [C-01..C-06]."""
    role = rotator.source.role

    def credentials() -> bytes:
        now = clock()
        current = rotator.valid(now)
        if current is not None:
            return current.document
        # No valid credentials (the source has failed past their expiry): EC2's answer
        # when it cannot assume the instance role [C-06].
        return unauthorized_document(role.name, from_epoch(now))

    def info() -> bytes:
        current = rotator.current
        updated = current.credentials.issued if current else from_epoch(clock())
        return info_document(updated, role.instance_profile_arn, role.instance_profile_id)

    return Directory(
        {
            "info": Leaf(info),
            "security-credentials": Directory({role.name: Leaf(credentials)}),
        }
    )


def identity_document(config: Config, pending: dt.datetime) -> bytes:
    """
    `dynamic/instance-identity/document` [D-03] [D-04]: alphabetical keys, two-space indent,
    `"key" : value`, arrays inline.
    """
    fields: dict[str, object] = {
        "accountId": config.account_id,
        "architecture": "x86_64",
        "availabilityZone": config.zone,
        "billingProducts": None,
        "devpayProductCodes": None,
        "imageId": config.ami_id,
        "instanceId": config.instance_id,
        "instanceType": config.instance_type,
        "kernelId": None,
        "marketplaceProductCodes": None,
        "pendingTime": iso8601(pending),
        "privateIp": config.private_ip,
        "ramdiskId": None,
        "region": config.region,
        "version": "2017-09-30",
    }
    lines = [f"  {json.dumps(k)} : {json.dumps(v, separators=(', ', ' : '))}"
             for k, v in fields.items()]
    return ("{\n" + ",\n".join(lines) + "\n}").encode("utf-8")


def build_tree(
    config: Config, rotator: Rotator, clock: Callable[[], float], started: dt.datetime
) -> Directory:
    """The whole tree below `/`: every version prefix serves the same one [N-06]."""
    hostname = local_hostname(config.private_ip, config.region)
    zone = config.zone
    mac = config.mac
    interface = Directory(
        {
            "device-number": leaf("0"),
            "interface-id": leaf("eni-0" + config.instance_id[-16:]),
            "local-hostname": leaf(hostname),
            "local-ipv4s": leaf(config.private_ip),
            "mac": leaf(mac),
            "owner-id": leaf(config.account_id),
            "security-group-ids": leaf("sg-0" + config.instance_id[-16:]),
            "security-groups": leaf("default"),
            "subnet-id": leaf("subnet-0" + config.instance_id[-16:]),
            "subnet-ipv4-cidr-block": leaf("172.31.16.0/20"),
            "vpc-id": leaf("vpc-0" + config.instance_id[-16:]),
            "vpc-ipv4-cidr-block": leaf("172.31.0.0/16"),
            "vpc-ipv4-cidr-blocks": leaf("172.31.0.0/16"),
        }
    )
    meta_data = Directory(
        {
            "ami-id": leaf(config.ami_id),
            "ami-launch-index": leaf("0"),
            "ami-manifest-path": leaf("(unknown)"),
            "block-device-mapping": Directory({"ami": leaf("/dev/xvda"),
                                               "root": leaf("/dev/xvda")}),
            "hostname": leaf(hostname),
            "iam": credential_tree(rotator, clock),
            "instance-action": leaf("none"),
            "instance-id": leaf(config.instance_id),
            "instance-life-cycle": leaf("on-demand"),
            "instance-type": leaf(config.instance_type),
            "local-hostname": leaf(hostname),
            "local-ipv4": leaf(config.private_ip),
            "mac": leaf(mac),
            "network": Directory({"interfaces": Directory({"macs": Directory({mac: interface})})}),
            "placement": Directory(
                {
                    "availability-zone": leaf(zone),
                    "availability-zone-id": leaf(zone_id(zone)),
                    "region": leaf(config.region),
                }
            ),
            "profile": leaf("default-hvm"),
            "reservation-id": leaf("r-0" + config.instance_id[-16:][::-1]),
            "security-groups": leaf("default"),
            "services": Directory({"domain": leaf("amazonaws.com"), "partition": leaf("aws")}),
            "system": leaf("nitro"),
        }
    )
    dynamic = Directory(
        {
            "fws": Directory({"instance-monitoring": leaf("disabled")}),
            "instance-identity": Directory(
                {"document": Leaf(identity_document(config, started))}
            ),
        }
    )
    version = Directory({"meta-data": meta_data, "dynamic": dynamic}, mark_directories=False)
    return Directory({name: version for name in VERSIONS}, mark_directories=False)
