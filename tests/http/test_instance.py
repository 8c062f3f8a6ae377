"""
The whole simulated instance over real sockets: what each setting makes appear, what
stays absent without it [R-09], and the exact bodies [M-*] [U-*] [X-01].
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imds.ec2.wire import NOT_FOUND_BODY
from tests.conftest import ServerFactory
from tests.support.metadata_client import MetadataClient

MD = "/latest/meta-data/"
Instance = Callable[..., Awaitable[MetadataClient]]


@pytest.fixture
def instance(imds_factory: ServerFactory, http: aiohttp.ClientSession) -> Instance:
    """Start an instance with the given settings and return a client for it."""

    async def start(**settings: Any) -> MetadataClient:
        server = await imds_factory(**settings)
        return MetadataClient(http, server.url)

    return start


class TestListings:
    async def test_default_instance_lists_what_every_instance_has_and_nothing_optional(
        self, instance: Instance
    ) -> None:
        """[M-01] [R-09] no public address, key, Spot notice, tags or IPv6 unless set."""
        client = await instance()
        listing = await client.listing(MD)
        for item in ("ami-id", "block-device-mapping/", "events/", "hostname", "iam/",
                     "identity-credentials/", "instance-action", "instance-id",
                     "instance-life-cycle", "instance-type", "local-hostname", "local-ipv4",
                     "mac", "metrics/", "network/", "placement/", "profile",
                     "reservation-id", "security-groups", "services/", "system"):
            assert item in listing
        for absent in ("public-ipv4", "public-hostname", "public-keys/", "spot/", "tags/",
                       "ipv6"):
            assert absent not in listing
            assert 404 == (await client.get(MD + absent)).status
        assert sorted(listing) == listing

    async def test_every_listed_child_answers_200(self, instance: Instance) -> None:
        """Walk the whole tree of a fully configured instance: a listing never lies."""
        client = await instance(public_ip="198.51.100.7", public_key="ssh-ed25519 AAAAC3Nz k",
                                spot_instance_action="stop", instance_metadata_tags="true",
                                tags=["Name=web"], ipv6="2001:db8::10", user_data="x",
                                extended_credentials="true",
                                network_interfaces=["mac=0e:00:00:00:00:02,private-ip=172.31"
                                                    ".20.5"])
        pending = ["/latest/"]
        seen = 0
        while pending:
            path = pending.pop()
            for line in await client.listing(path):
                # public-keys/ lists `0=<name>` for the directory `0/` [M-07].
                child = path + (line.split("=")[0] + "/" if path.endswith("public-keys/")
                                else line)
                assert 200 == (await client.get(child)).status, child
                seen += 1
                if child.endswith("/"):
                    pending.append(child)
                elif path == "/latest/" and line in ("meta-data", "dynamic"):
                    pending.append(child + "/")
        assert seen > 80

    async def test_public_address_brings_public_ipv4_and_hostname(
        self, instance: Instance
    ) -> None:
        """[M-02] present only with a public IPv4."""
        client = await instance(public_ip="198.51.100.7")
        assert "198.51.100.7" == await client.text(MD + "public-ipv4")
        assert "ec2-198-51-100-7.compute-1.amazonaws.com" == \
            await client.text(MD + "public-hostname")

    async def test_other_regions_use_their_own_dns_names(self, instance: Instance) -> None:
        client = await instance(region="eu-west-1", public_ip="198.51.100.7")
        assert "ip-172-31-16-10.eu-west-1.compute.internal" == \
            await client.text(MD + "local-hostname")
        assert "ec2-198-51-100-7.eu-west-1.compute.amazonaws.com" == \
            await client.text(MD + "public-hostname")
        assert "euw1-az1" == await client.text(MD + "placement/availability-zone-id")

    async def test_public_key_is_listed_under_its_key_name(self, instance: Instance) -> None:
        """[M-07] `0=<name>`, then `openssh-key`."""
        key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE7 me@laptop"
        client = await instance(public_key=key, key_name="deploy")
        assert ["0=deploy"] == await client.listing(MD + "public-keys/")
        assert ["openssh-key"] == await client.listing(MD + "public-keys/0/")
        assert key == await client.text(MD + "public-keys/0/openssh-key")


class TestNetworkInterfaces:
    ETH0 = ("device-number", "interface-id", "local-hostname", "local-ipv4s", "mac",
            "network-card-index", "owner-id", "security-group-ids", "security-groups",
            "subnet-id", "subnet-ipv4-cidr-block", "vpc-id", "vpc-ipv4-cidr-block",
            "vpc-ipv4-cidr-blocks")

    async def test_private_only_interface_lists_the_private_items(
        self, instance: Instance
    ) -> None:
        """[M-04]"""
        client = await instance()
        mac = await client.text(MD + "mac")
        assert [mac + "/"] == await client.listing(MD + "network/interfaces/macs/")
        base = f"{MD}network/interfaces/macs/{mac}/"
        assert list(self.ETH0) == await client.listing(base)
        assert "172.31.16.10" == await client.text(base + "local-ipv4s")
        assert "172.31.16.0/20" == await client.text(base + "subnet-ipv4-cidr-block")
        assert "172.31.0.0/16" == await client.text(base + "vpc-ipv4-cidr-block")
        assert "123456789012" == await client.text(base + "owner-id")
        assert re.fullmatch(r"eni-[0-9a-f]{17}", await client.text(base + "interface-id"))
        assert re.fullmatch(r"subnet-[0-9a-f]{17}", await client.text(base + "subnet-id"))
        assert re.fullmatch(r"vpc-[0-9a-f]{17}", await client.text(base + "vpc-id"))

    async def test_security_groups_are_one_a_line_with_matching_ids(
        self, instance: Instance
    ) -> None:
        client = await instance(security_groups=["web", "ssh"])
        assert ["web", "ssh"] == await client.listing(MD + "security-groups")
        mac = await client.text(MD + "mac")
        ids = await client.listing(f"{MD}network/interfaces/macs/{mac}/security-group-ids")
        assert 2 == len(ids)
        assert all(re.fullmatch(r"sg-[0-9a-f]{17}", sg) for sg in ids)

    async def test_public_and_ipv6_items_appear_with_their_addresses(
        self, instance: Instance
    ) -> None:
        client = await instance(public_ip="198.51.100.7", ipv6="2001:db8:1:2::10")
        base = f"{MD}network/interfaces/macs/{await client.text(MD + 'mac')}/"
        listing = await client.listing(base)
        for item in ("ipv4-associations/", "public-hostname", "public-ipv4s", "ipv6s",
                     "subnet-ipv6-cidr-blocks", "vpc-ipv6-cidr-blocks"):
            assert item in listing
        assert ["198.51.100.7"] == await client.listing(base + "ipv4-associations/")
        assert "172.31.16.10" == await client.text(base + "ipv4-associations/198.51.100.7")
        assert "2001:db8:1:2::/64" == await client.text(base + "subnet-ipv6-cidr-blocks")
        assert "2001:db8:1:2::10" == await client.text(base + "ipv6s")
        assert "2001:db8:1:2::10" == await client.text(MD + "ipv6")

    async def test_extra_interface_gets_its_own_directory_in_the_same_vpc(
        self, instance: Instance
    ) -> None:
        client = await instance(network_interfaces=[
            "mac=0e:00:00:00:00:02,private-ip=172.31.40.5,public-ip=203.0.113.9"])
        eth0 = await client.text(MD + "mac")
        assert sorted([eth0 + "/", "0e:00:00:00:00:02/"]) == \
            await client.listing(MD + "network/interfaces/macs/")
        eth1 = f"{MD}network/interfaces/macs/0e:00:00:00:00:02/"
        assert "1" == await client.text(eth1 + "device-number")
        assert "172.31.32.0/20" == await client.text(eth1 + "subnet-ipv4-cidr-block")
        assert "203.0.113.9" == await client.text(eth1 + "public-ipv4s")
        assert await client.text(f"{MD}network/interfaces/macs/{eth0}/vpc-id") == \
            await client.text(eth1 + "vpc-id")
        # The instance-level public address is eth0's: none here.
        assert 404 == (await client.get(MD + "public-ipv4")).status


class TestIdentityCredentials:
    async def test_every_instance_has_the_ec2_instance_role(self, instance: Instance) -> None:
        """[M-06] present without any role configuration, same shape as role credentials."""
        client = await instance(account_id="111122223333")
        assert ["info", "security-credentials/"] == \
            await client.listing(MD + "identity-credentials/ec2/")
        info = json.loads(await client.text(MD + "identity-credentials/ec2/info"))
        assert ["Code", "LastUpdated", "AccountId"] == list(info)
        assert ("Success", "111122223333") == (info["Code"], info["AccountId"])
        assert ["ec2-instance"] == await client.listing(
            MD + "identity-credentials/ec2/security-credentials/")
        body = await client.text(MD + "identity-credentials/ec2/security-credentials/"
                                 "ec2-instance")
        document = json.loads(body)
        assert ["Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token",
                "Expiration"] == list(document)
        assert document["AccessKeyId"].startswith("ASIA")
        assert document["LastUpdated"] == info["LastUpdated"]

    async def test_they_are_not_the_role_credentials(self, instance: Instance) -> None:
        client = await instance()
        role = json.loads(await client.text(MD + "iam/security-credentials/imds-local-role"))
        identity = json.loads(await client.text(
            MD + "identity-credentials/ec2/security-credentials/ec2-instance"))
        assert role["AccessKeyId"] != identity["AccessKeyId"]

    async def test_they_rotate_before_expiry(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        now = [1_900_000_000.0]
        server = await imds_factory(clock=lambda: now[0], credential_lifetime=600,
                                    refresh_ahead=120)
        client = MetadataClient(http, server.url)
        path = MD + "identity-credentials/ec2/security-credentials/ec2-instance"
        first = json.loads(await client.text(path))
        now[0] += 470  # still 130 s left: the same set
        assert first == json.loads(await client.text(path))
        now[0] += 20  # 110 s left, inside the 120 s window: a new set
        second = json.loads(await client.text(path))
        assert first["AccessKeyId"] != second["AccessKeyId"]
        assert second["Expiration"] > first["Expiration"]


class TestExtendedCredentials:
    async def test_absent_by_default(self, instance: Instance) -> None:
        """[X-01] [X-02] clients fall back to the legacy path on this 404."""
        client = await instance()
        assert "security-credentials-extended/" not in await client.listing(MD + "iam/")
        reply = await client.get(MD + "iam/security-credentials-extended/")
        assert (404, NOT_FOUND_BODY) == (reply.status, reply.body)

    async def test_flag_serves_the_same_keys_with_account_id(self, instance: Instance) -> None:
        client = await instance(extended_credentials="true", account_id="111122223333")
        assert ["imds-local-role"] == await client.listing(
            MD + "iam/security-credentials-extended/")
        legacy = json.loads(await client.text(MD + "iam/security-credentials/imds-local-role"))
        extended = json.loads(await client.text(
            MD + "iam/security-credentials-extended/imds-local-role"))
        assert {**legacy, "AccountId": "111122223333"} == extended
        assert "AccountId" not in legacy


class TestSpotAndEvents:
    async def test_no_spot_directory_on_demand(self, instance: Instance) -> None:
        client = await instance()
        assert "on-demand" == await client.text(MD + "instance-life-cycle")
        assert 404 == (await client.get(MD + "spot/instance-action")).status

    async def test_spot_termination_notice(self, instance: Instance) -> None:
        """[M-08] the AWS documentation's body, and termination-time for terminations."""
        client = await instance(spot_instance_action="terminate@2030-09-18T08:22:00Z")
        assert "spot" == await client.text(MD + "instance-life-cycle")
        assert ["instance-action", "termination-time"] == await client.listing(MD + "spot/")
        assert '{"action": "terminate", "time": "2030-09-18T08:22:00Z"}' == \
            await client.text(MD + "spot/instance-action")
        assert "2030-09-18T08:22:00Z" == await client.text(MD + "spot/termination-time")

    async def test_spot_stop_without_a_time_is_two_minutes_out(
        self, instance: Instance
    ) -> None:
        client = await instance(spot_instance_action="stop")
        notice = json.loads(await client.text(MD + "spot/instance-action"))
        pending = json.loads(await client.text("/latest/dynamic/instance-identity/document"))
        assert "stop" == notice["action"]
        assert notice["time"] > pending["pendingTime"]
        assert 404 == (await client.get(MD + "spot/termination-time")).status

    async def test_no_events_is_an_empty_array(self, instance: Instance) -> None:
        """[M-09] [Q-05]"""
        client = await instance()
        assert ["history", "scheduled"] == await client.listing(MD + "events/maintenance/")
        assert "[ ]" == await client.text(MD + "events/maintenance/scheduled")
        assert [] == json.loads(await client.text(MD + "events/maintenance/history"))

    async def test_scheduled_and_history_events_in_ec2s_shape(
        self, instance: Instance
    ) -> None:
        client = await instance(maintenance_events=[
            "system-reboot,not-before=2030-01-21T09:00:43Z,not-after=2030-01-21T09:17:23Z",
            "instance-stop,state=completed",
        ])
        body = await client.text(MD + "events/maintenance/scheduled")
        scheduled = json.loads(body)
        assert 1 == len(scheduled)
        event = scheduled[0]
        assert ["NotBefore", "Code", "Description", "EventId", "NotAfter", "State"] == \
            list(event)
        assert ("21 Jan 2030 09:00:43 GMT", "21 Jan 2030 09:17:23 GMT") == \
            (event["NotBefore"], event["NotAfter"])
        assert ("system-reboot", "scheduled reboot", "active") == \
            (event["Code"], event["Description"], event["State"])
        assert re.fullmatch(r"instance-event-[0-9a-f]{17}", event["EventId"])
        assert body.startswith('[ {\n  "NotBefore" : "21 Jan 2030 09:00:43 GMT",\n')
        history = json.loads(await client.text(MD + "events/maintenance/history"))
        assert [("instance-stop", "completed", "[Completed] scheduled stop")] == \
            [(e["Code"], e["State"], e["Description"]) for e in history]


class TestTags:
    async def test_tags_are_hidden_unless_enabled(self, instance: Instance) -> None:
        """[M-11] InstanceMetadataTags is disabled by default."""
        client = await instance(tags=["Name=web"])
        assert 404 == (await client.get(MD + "tags/instance")).status

    async def test_enabled_tags_list_keys_and_answer_values(self, instance: Instance) -> None:
        client = await instance(tags=["Name=web server", "aws:team=core"],
                                instance_metadata_tags="true")
        assert ["instance/"] == await client.listing(MD + "tags/")
        assert ["Name", "aws:team"] == await client.listing(MD + "tags/instance")
        assert "web server" == await client.text(MD + "tags/instance/Name")
        assert "core" == await client.text(MD + "tags/instance/aws:team")


class TestUserData:
    async def test_absent_user_data_is_404_and_unlisted(self, instance: Instance) -> None:
        """[U-02] [N-07]"""
        client = await instance()
        assert ["dynamic", "meta-data"] == await client.listing("/latest/")
        reply = await client.get("/latest/user-data")
        assert (404, NOT_FOUND_BODY) == (reply.status, reply.body)

    async def test_binary_file_round_trips_byte_for_byte(
        self, instance: Instance, tmp_path: Path
    ) -> None:
        """[U-01] every byte value, served raw as application/octet-stream."""
        data = bytes(range(256)) * 4 + b"\r\n\x00#!/bin/sh\n"
        (tmp_path / "user-data.bin").write_bytes(data)
        client = await instance(user_data_file=tmp_path / "user-data.bin")
        assert ["dynamic", "meta-data", "user-data"] == await client.listing("/latest/")
        for path in ("/latest/user-data", "/latest/user-data/", "/2021-03-23/user-data"):
            reply = await client.get(path)
            assert (200, "application/octet-stream", data) == \
                (reply.status, reply.content_type, reply.body), path

    async def test_file_is_read_at_startup_only(
        self, instance: Instance, tmp_path: Path
    ) -> None:
        """No disk read on the request path: a later change to the file is not served."""
        (tmp_path / "ud").write_bytes(b"first")
        client = await instance(user_data_file=tmp_path / "ud")
        (tmp_path / "ud").write_bytes(b"second")
        assert b"first" == await client.body("/latest/user-data")

    async def test_inline_text_is_served_as_utf8(self, instance: Instance) -> None:
        client = await instance(user_data="#cloud-config\nhostname: café\n")
        assert "#cloud-config\nhostname: café\n".encode() == \
            await client.body("/latest/user-data")


class TestVersions:
    async def test_dated_prefixes_serve_the_same_tree(self, instance: Instance) -> None:
        """[N-06]"""
        client = await instance(user_data="x")
        for path in ("meta-data/instance-id", "meta-data/placement/region",
                     "meta-data/events/maintenance/scheduled", "dynamic/fws/instance-monitoring",
                     "user-data"):
            latest = await client.body("/latest/" + path)
            for version in ("1.0", "2016-09-02", "2024-04-11"):
                assert latest == await client.body(f"/{version}/{path}"), (version, path)
