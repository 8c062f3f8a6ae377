"""
Real clients read the simulated instance: botocore's region lookup and the `ec2-metadata`
package from PyPI, over real sockets to a server in a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.utils import IMDSRegionProvider
from ec2_metadata import EC2Metadata

from imds.server import Running


def ec2_metadata_client(server: Running) -> EC2Metadata:
    # The package hard-codes http://169.254.169.254/latest/ in its constructor; its URLs
    # are plain attributes, so point them at the local server (never the real address).
    client = EC2Metadata()
    client.service_url = server.url + "/latest/"
    client.dynamic_url = client.service_url + "dynamic/"
    client.metadata_url = client.service_url + "meta-data/"
    client.userdata_url = client.service_url + "user-data/"
    return client


class TestBotocoreRegion:
    def test_imds_region_provider_resolves_the_configured_region(
        self, imds_thread: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """S-PY-09: botocore asks `placement/availability-zone/` and drops the letter."""
        server = imds_thread(region="ap-southeast-2", availability_zone="ap-southeast-2c")
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        assert "ap-southeast-2" == IMDSRegionProvider(botocore.session.Session()).provide()

    @pytest.mark.parametrize("client_region, mode_timeout", [
        pytest.param("eu-west-3", 1.1, id="in-region"),
        pytest.param("us-west-2", 3.1, id="cross-region"),
    ])
    def test_boto3_auto_defaults_mode_uses_the_imds_region(
        self, imds_thread: Callable[..., Running], monkeypatch: pytest.MonkeyPatch,
        client_region: str, mode_timeout: float,
    ) -> None:
        """
        With `AWS_DEFAULTS_MODE=auto` boto3 compares the client's region with the IMDS
        region (SmartDefaultsConfigStoreFactory): same region means the shorter
        `in-region` connect timeout, another region the `cross-region` one.
        """
        server = imds_thread(region="eu-west-3")
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        monkeypatch.setenv("AWS_DEFAULTS_MODE", "auto")
        session = boto3.Session(aws_access_key_id="AKIDEXAMPLE",
                                aws_secret_access_key="not-used", region_name=client_region)
        client = session.client("sts")
        assert mode_timeout == client.meta.config.connect_timeout


class TestEc2MetadataPackage:
    def test_reads_instance_id_region_and_identity_document(
        self, imds_thread: Callable[..., Running]
    ) -> None:
        server = imds_thread(region="ca-central-1", account_id="444455556666",
                             instance_type="c7g.large", architecture="arm64")
        md = ec2_metadata_client(server)
        assert server.config.instance_id == md.instance_id
        assert "ca-central-1" == md.region  # from the identity document
        assert "ca-central-1a" == md.availability_zone
        assert "cac1-az1" == md.availability_zone_id
        assert "444455556666" == md.account_id
        document = md.instance_identity_document
        assert ("arm64", "c7g.large", server.config.instance_id) == (
            document["architecture"], document["instanceType"], document["instanceId"])

    def test_reads_the_rest_of_the_instance(
        self, imds_thread: Callable[..., Running], tmp_path: Path
    ) -> None:
        (tmp_path / "ud").write_bytes(b"\x00\xffbinary")
        server = imds_thread(
            public_ip="198.51.100.7", security_groups=["web", "ssh"],
            tags=["Name=web"], instance_metadata_tags="true",
            public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 me", key_name="deploy",
            spot_instance_action="terminate@2030-01-02T03:04:05Z",
            user_data_file=tmp_path / "ud",
            network_interfaces=["mac=0e:00:00:00:00:02,private-ip=172.31.40.5"],
        )
        md = ec2_metadata_client(server)
        assert ("198.51.100.7", "ec2-198-51-100-7.compute-1.amazonaws.com") == \
            (md.public_ipv4, md.public_hostname)
        assert ["web", "ssh"] == md.security_groups
        assert {"Name": "web"} == dict(md.tags)
        assert "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 me" == md.public_keys["deploy"].openssh_key
        assert b"\x00\xffbinary" == md.user_data
        action = md.spot_instance_action
        assert action is not None
        assert ("terminate", 2030) == (action.action, action.time.year)
        interfaces = md.network_interfaces
        assert {server.config.mac, "0e:00:00:00:00:02"} == set(interfaces)
        eth1 = interfaces["0e:00:00:00:00:02"]
        assert (1, ["172.31.40.5"]) == (eth1.device_number, eth1.private_ipv4s)
        assert eth1.vpc_id == interfaces[server.config.mac].vpc_id
        assert md.iam_info is not None
        assert "imds-local-role" == md.instance_profile_name

    def test_absent_things_read_as_none(self, imds_thread: Callable[..., Running]) -> None:
        md = ec2_metadata_client(imds_thread())
        assert (None, None, None, {}) == (md.public_ipv4, md.user_data,
                                          md.spot_instance_action, md.public_keys)
