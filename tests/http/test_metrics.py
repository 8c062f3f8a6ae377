"""`/metrics` on the control listener, read back with prometheus-client's own parser."""

from __future__ import annotations

import secrets

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imds.lab.metrics import path_label
from tests.conftest import ServerFactory
from tests.support.labutil import CREDENTIALS, ControlAPI, get, token


@pytest.fixture
async def lab(imds_factory: ServerFactory, http: aiohttp.ClientSession) -> ControlAPI:
    return ControlAPI(http, await imds_factory())


async def scrape(lab: ControlAPI) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} from the exposition text."""
    status, text = await lab.call("GET", "/metrics")
    assert 200 == status
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return samples


def one(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str,
        **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


class TestMetrics:
    async def test_requests_are_counted_by_path_and_status(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        tok = await token(http, lab.running.url)
        await get(http, lab.running.url, CREDENTIALS, tok)
        await get(http, lab.running.url, CREDENTIALS, tok)
        await get(http, lab.running.url, "/latest/meta-data/nothing-here", tok)
        await get(http, lab.running.url, "/latest/meta-data/")
        samples = await scrape(lab)
        assert 1 == one(samples, "imds_requests_total", path="/latest/api/token", status="200")
        assert 2 == one(samples, "imds_requests_total",
                        path="/latest/meta-data/iam/security-credentials/{role}", status="200")
        assert 1 == one(samples, "imds_requests_total", path="/latest/meta-data/other",
                        status="404")
        assert 1 == one(samples, "imds_requests_total", path="/latest/meta-data/",
                        status="401")
        assert 1 == one(samples, "imds_tokens_issued_total")
        # By endpoint, every endpoint listed (imds.containers.kinds).
        assert {"imds": 2, "ecs": 0, "pod-identity": 0} == {
            dict(labels)["endpoint"]: value
            for labels, value in samples["imds_credential_fetches_total"].items()}

    async def test_random_paths_do_not_grow_the_label_set(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        """A client walking random paths must not create one time series per path."""
        for _ in range(60):
            await get(http, lab.running.url, f"/{secrets.token_hex(4)}/{secrets.token_hex(4)}")
            await get(http, lab.running.url, f"/latest/meta-data/{secrets.token_hex(4)}")
        series = (await scrape(lab))["imds_requests_total"]
        # IMDSv2 required and no token: 401 for all of them.
        assert 60 == one({"s": series}, "s", path="other", status="401")
        assert {"other", "/latest/meta-data/other"} == {dict(k)["path"] for k in series}

    async def test_the_raw_counters_stop_growing_at_their_cap(
        self, lab: ControlAPI, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Memory too: past the cap, new paths share one counter."""
        monkeypatch.setattr("imds.lab.lab.MAX_COUNTED_PATHS", 10)
        for _ in range(30):
            await get(http, lab.running.url, f"/{secrets.token_hex(4)}")
        counted = lab.running.lab.requests  # type: ignore[union-attr]
        assert 11 == len(counted)
        assert 20 == counted[("/…", 401)]
        assert 30 == one(await scrape(lab), "imds_requests_total", path="other", status="401")

    async def test_rotations_fetch_errors_and_latency(self, lab: ControlAPI) -> None:
        await lab.fault(kind="source", count=1)
        await lab.call("POST", "/api/rotate")
        await lab.ok("POST", "/api/rotate")
        samples = await scrape(lab)
        assert 2 == one(samples, "imds_rotations_total", outcome="ok")  # prime + rotate
        assert 1 == one(samples, "imds_rotations_total", outcome="failed")
        assert 1 == one(samples, "imds_source_fetch_errors_total")
        # Timed fetches only (a simulated outage never reaches the source).
        assert 2 == one(samples, "imds_source_fetch_seconds_count")
        assert 2 == one(samples, "imds_source_fetch_seconds_bucket", le="+Inf")
        assert 0 <= one(samples, "imds_source_fetch_seconds_sum") < 1

    async def test_seconds_left_and_next_rotation(self, lab: ControlAPI) -> None:
        samples = await scrape(lab)
        left = one(samples, "imds_credentials_seconds_left", role="imds-local-role")
        upcoming = one(samples, "imds_next_rotation_seconds", role="imds-local-role")
        assert 3590 < left <= 3600
        assert left - 300 == pytest.approx(upcoming, abs=1)

    async def test_active_faults_by_kind(self, lab: ControlAPI) -> None:
        await lab.fault(kind="status")
        await lab.fault(kind="status", status=429)
        await lab.ok("POST", "/api/revoke")
        samples = await scrape(lab)
        assert 2 == one(samples, "imds_faults_active", kind="status")
        assert 1 == one(samples, "imds_faults_active", kind="revoked")

    async def test_metrics_need_the_token(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        async with http.get(lab.url + "/metrics") as r:
            assert 401 == r.status


class TestPathLabel:
    @pytest.mark.parametrize(
        "path, label",
        [
            ("/", "/"),
            ("/latest/api/token", "/latest/api/token"),
            ("/2021-03-23/meta-data/iam/security-credentials/any-role",
             "/{version}/meta-data/iam/security-credentials/{role}"),
            ("/latest/meta-data/iam/security-credentials/",
             "/latest/meta-data/iam/security-credentials/"),
            ("/latest/meta-data/iam/security-credentials-extended/r",
             "/latest/meta-data/iam/security-credentials-extended/{role}"),
            ("/latest/meta-data/placement/region", "/latest/meta-data/placement"),
            ("/latest/meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/mac",
             "/latest/meta-data/network"),
            ("/latest/dynamic/instance-identity/document", "/latest/dynamic/instance-identity"),
            ("/latest/user-data", "/latest/user-data"),
            ("/latest/unknown", "other"),
            ("/wp-admin/", "other"),
        ],
    )
    def test_labels_are_from_a_fixed_set(self, path: str, label: str) -> None:
        assert label == path_label(path)
