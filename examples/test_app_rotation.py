"""
Worked example of the `imds_server` fixture (docs/pytest-plugin.md): how does an
application behave when its credentials rotate, expire or cannot be had?

The application under test is `ReportService`, a long-lived service with one boto3
session that calls an AWS API (STS GetCallerIdentity, here on a local moto server: no
AWS account needed). Run with `pytest examples/test_app_rotation.py`; imds's plugin is
loaded by its entry point, moto comes with `pip install imds[test]`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import NoCredentialsError

from imds.pytest_plugin import ImdsServer, ImdsServerFactory


class ReportService:
    """The application: one boto3 session for the life of the process, as services do."""

    def __init__(self, endpoint_url: str) -> None:
        self.session = boto3.Session()
        self.sts = self.session.client("sts", endpoint_url=endpoint_url)

    def account(self) -> str:
        return str(self.sts.get_caller_identity()["Account"])

    def key_in_use(self) -> str:
        return str(self.session.get_credentials().get_frozen_credentials().access_key)


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    """A local STS (moto in server mode) that accepts any well-signed request."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{server._server.server_port}"  # type: ignore[union-attr]
    server.stop()


def test_keeps_working_across_a_rotation(imds_server: ImdsServer, api: str) -> None:
    service = ReportService(api)
    service.account()
    old = service.key_in_use()
    new = imds_server.rotate()
    # EC2 does not withdraw keys it replaced [L-05]: the running service keeps its own
    # until botocore's refresh window (15 minutes before their expiry) and keeps working.
    assert service.account()
    assert old == service.key_in_use()
    # A restart gets the new ones.
    assert new.access_key_id == ReportService(api).key_in_use()


def test_rides_through_an_imds_outage_once_started(imds_server: ImdsServer, api: str) -> None:
    service = ReportService(api)
    service.account()
    with imds_server.fault("status", status=503):
        for _ in range(5):
            assert service.account()


def test_cannot_start_while_imds_is_unreachable(imds_server: ImdsServer, api: str) -> None:
    with imds_server.fault("drop", mode="reset"), pytest.raises(NoCredentialsError):
        ReportService(api).account()


def test_starts_on_expired_credentials_during_an_sts_outage(
    imds_server: ImdsServer, api: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Static stability [L-04]: IMDS serves the last keys past expiry, botocore extends them."""
    imds_server.fault("source")  # the role's credential source (STS) is down
    imds_server.expire()  # ...long enough for the current keys to expire
    with caplog.at_level(logging.INFO, logger="botocore"):
        assert ReportService(api).account()
    assert "Attempting credential expiration extension" in caplog.text
    assert "expired" == imds_server.fetches()[-1]["fault"]


def test_falls_back_to_imdsv1_without_a_token_endpoint(
    imds_server_factory: ImdsServerFactory, api: str
) -> None:
    """A proxy that blocks the token PUT: 403 means "no IMDSv2 here" to the SDKs."""
    server = imds_server_factory(http_tokens="optional")
    with server.fault("token", status=403) as fault:
        assert ReportService(api).account()
    assert fault.hits >= 1
