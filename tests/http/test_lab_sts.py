"""The rotation lab with the STS-backed source: a simulated outage never reaches STS."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from imds.creds.sources.sts import AssumeRoleSource
from imds.creds.sources.sts_request import AssumeRoleSettings
from tests.conftest import ServerFactory
from tests.support.labutil import ControlAPI
from tests.support.sts_support import StsProxy

ROLE = "arn:aws:iam::111122223333:role/app"


def source(sts: StsProxy) -> AssumeRoleSource:
    return AssumeRoleSource(AssumeRoleSettings(role_arns=(ROLE,), session_name="imds-test",
                                               duration=900, endpoint_url=sts.url))


class TestStsOutage:
    async def test_source_fault_fails_rotation_without_calling_sts(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, sts: StsProxy
    ) -> None:
        lab = ControlAPI(http, await imds_factory(source=source(sts)))
        calls = len(sts.calls("AssumeRole"))
        await lab.fault(kind="source", count=1)
        status, data = await lab.call("POST", "/api/rotate")
        assert (503, True) == (status, "simulated source outage" in data["error"])
        assert calls == len(sts.calls("AssumeRole"))  # STS never saw it
        await lab.ok("POST", "/api/rotate")
        assert calls + 1 == len(sts.calls("AssumeRole"))

    async def test_sts_round_trips_are_timed(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, sts: StsProxy
    ) -> None:
        lab = ControlAPI(http, await imds_factory(source=source(sts)))
        await lab.ok("POST", "/api/rotate")
        _, text = await lab.call("GET", "/metrics")
        family = next(f for f in text_string_to_metric_families(text)
                      if f.name == "imds_source_fetch_seconds")
        values = {s.name: s.value for s in family.samples if not s.labels.get("le")}
        assert 2 == values["imds_source_fetch_seconds_count"]  # startup + rotate
        assert values["imds_source_fetch_seconds_sum"] > 0

    async def test_session_duration_is_not_a_runtime_setting(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, sts: StsProxy
    ) -> None:
        """An assumed role's lifetime is its session duration (--duration), fixed at start."""
        lab = ControlAPI(http, await imds_factory(source=source(sts)))
        status, data = await lab.call("POST", "/api/settings", {"lifetime": 60})
        assert 409 == status
        assert "sts:AssumeRole" in data["error"]
