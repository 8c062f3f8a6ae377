"""
The instance's place in a VPC: zone ids, DNS names, and its network interfaces with
every id and CIDR EC2 shows for them [M-02] [M-03] [M-04].

Ids nobody configures (interface, subnet, VPC, security group, reservation) are derived
from the configured ones by hashing, so they look real and stay the same across restarts.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from imds.config import Config

_DIRECTIONS = {
    "north": "n", "south": "s", "east": "e", "west": "w", "central": "c",
    "northeast": "ne", "southeast": "se", "northwest": "nw", "southwest": "sw",
}


def stable_hex(*parts: str, length: int = 17) -> str:
    """`length` hex digits that depend only on `parts`: the body of an EC2 resource id."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def zone_id(zone: str) -> str:
    """`us-east-1a` -> `use1-az1`, the shape of real zone ids [M-03]."""
    area, direction, number = zone[:-1].split("-", 2)
    letter = zone[-1]
    if "-" in number:  # us-gov-west-1: the direction is the second word
        direction, number = number.split("-", 1)
    short = _DIRECTIONS.get(direction, direction[:1])
    return f"{area}{short}{number}-az{ord(letter) - ord('a') + 1}"


def partition(region: str) -> tuple[str, str]:
    """(`services/partition`, `services/domain`) of a region [M-02]."""
    if region.startswith("cn-"):
        return "aws-cn", "amazonaws.com.cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov", "amazonaws.com"
    return "aws", "amazonaws.com"


def local_hostname(ip: str, region: str) -> str:
    # [M-02] us-east-1 keeps its historical domain; other regions use <region>.compute.internal.
    domain = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return f"ip-{ip.replace('.', '-')}.{domain}"


def public_hostname(ip: str, region: str) -> str:
    # [M-02] the same split for public names: compute-1 in us-east-1, <region>.compute elsewhere.
    _, domain = partition(region)
    zone = "compute-1" if region == "us-east-1" else f"{region}.compute"
    return f"ec2-{ip.replace('.', '-')}.{zone}.{domain}"


@dataclass(frozen=True, slots=True)
class Interface:
    """One ENI as `network/interfaces/macs/<mac>/` shows it [M-04]."""

    device_number: int
    mac: str
    interface_id: str
    owner_id: str
    private_ip: str
    local_hostname: str
    public_ip: str
    public_hostname: str
    ipv6: str
    security_groups: tuple[str, ...]
    security_group_ids: tuple[str, ...]
    subnet_id: str
    subnet_cidr: str
    subnet_ipv6_cidr: str
    vpc_id: str
    vpc_cidr: str
    vpc_ipv6_cidr: str


def interfaces(config: Config) -> list[Interface]:
    """eth0 from the top-level settings, then each extra interface, by device number."""
    # One VPC per instance: every ENI of an instance is in the instance's VPC. Its CIDR is
    # the /16 around eth0's address (172.31.0.0/16 for the default VPC's addresses).
    vpc_cidr = str(ipaddress.IPv4Network(f"{config.private_ip}/16", strict=False))
    vpc_id = "vpc-" + stable_hex(config.account_id, config.region, vpc_cidr)
    vpc_ipv6 = (str(ipaddress.IPv6Network(f"{config.ipv6}/56", strict=False))
                if config.ipv6 else "")
    group_ids = tuple("sg-" + stable_hex(config.account_id, vpc_id, name)
                      for name in config.security_groups)
    hostname = config.hostname or local_hostname(config.private_ip, config.region)

    def make(device: int, mac: str, private_ip: str, public_ip: str, ipv6: str,
             name: str = "", public_name: str = "") -> Interface:
        subnet_cidr = str(ipaddress.IPv4Network(f"{private_ip}/20", strict=False))
        return Interface(
            device_number=device,
            mac=mac,
            interface_id="eni-" + stable_hex(config.instance_id, mac),
            owner_id=config.account_id,
            private_ip=private_ip,
            local_hostname=name or local_hostname(private_ip, config.region),
            public_ip=public_ip,
            public_hostname=(public_name or public_hostname(public_ip, config.region))
            if public_ip else "",
            ipv6=ipv6,
            security_groups=config.security_groups,
            security_group_ids=group_ids,
            subnet_id="subnet-" + stable_hex(vpc_id, config.zone, subnet_cidr),
            subnet_cidr=subnet_cidr,
            subnet_ipv6_cidr=(str(ipaddress.IPv6Network(f"{ipv6}/64", strict=False))
                              if ipv6 else ""),
            vpc_id=vpc_id,
            vpc_cidr=vpc_cidr,
            vpc_ipv6_cidr=vpc_ipv6,
        )

    result = [make(0, config.mac, config.private_ip, config.public_ip, config.ipv6,
                   hostname, config.public_hostname)]
    for index, spec in enumerate(config.network_interfaces, start=1):
        device = spec.device_number if spec.device_number is not None else index
        result.append(make(device, spec.mac, spec.private_ip, spec.public_ip, spec.ipv6))
    return sorted(result, key=lambda nic: nic.device_number)

