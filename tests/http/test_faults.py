"""Faults injected through the control API, seen by clients over real sockets [§15 item 9]."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from urllib.parse import urlsplit

import aiohttp
import pytest

from imds.errors import FaultError
from imds.lab.faultspec import FaultSpec
from imds.lab.fetches import credential_path
from imds.server import Running
from tests.conftest import ServerFactory
from tests.support import rawhttp
from tests.support.labutil import CREDENTIALS, ControlAPI, get, token
from tests.support.polling import until


@pytest.fixture
async def lab(imds_factory: ServerFactory, http: aiohttp.ClientSession) -> ControlAPI:
    return ControlAPI(http, await imds_factory())


def expiration(body: bytes) -> dt.datetime:
    return dt.datetime.strptime(json.loads(body)["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.UTC)


class TestStatusFault:
    async def test_answers_the_status_for_count_requests_then_recovers(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        """[P-03] 429 throttling; EC2's XHTML body and headers; then normal service."""
        url = lab.running.url
        tok = await token(http, url)
        fault = await lab.fault(kind="status", status=429, count=2)
        seen = []
        for _ in range(3):
            async with http.get(url + "/latest/meta-data/instance-id",
                                headers={"X-aws-ec2-metadata-token": tok}) as r:
                seen.append((r.status, r.headers["Server"], await r.read()))
        assert [429, 429, 200] == [s for s, _, _ in seen]
        assert {"EC2ws"} == {server for _, server, _ in seen}
        assert b"<title>429 - Too Many Requests</title>" in seen[0][2]
        ended = next(f for f in (await lab.status())["fault_history"] if f["id"] == fault["id"])
        assert ("count", 2, 0) == (ended["end_reason"], ended["hits"], ended["remaining"])

    async def test_default_status_is_503_and_it_applies_before_authentication(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        """A throttle in front of IMDS answers before the token is even looked at."""
        await lab.fault(kind="status", count=1)
        status, _ = await get(http, lab.running.url, "/latest/meta-data/")
        assert 503 == status
        status, _ = await get(http, lab.running.url, "/latest/meta-data/")
        assert 401 == status  # IMDSv2 required, no token: the real answer again

    @pytest.mark.parametrize(
        "pattern, hit, missed",
        [
            pytest.param("/latest/meta-data/placement/", "/latest/meta-data/placement/region",
                         "/latest/meta-data/instance-id", id="prefix"),
            pytest.param("/*/meta-data/*/region", "/2021-03-23/meta-data/placement/region",
                         "/latest/meta-data/placement/availability-zone", id="glob"),
        ],
    )
    async def test_only_matching_paths_are_affected(
        self, lab: ControlAPI, http: aiohttp.ClientSession, pattern: str, hit: str,
        missed: str
    ) -> None:
        tok = await token(http, lab.running.url)
        await lab.fault(kind="status", status=500, paths=[pattern])
        assert 500 == (await get(http, lab.running.url, hit, tok))[0]
        assert 200 == (await get(http, lab.running.url, missed, tok))[0]
        assert 200 == (await get(http, lab.running.url, "/latest/meta-data/ami-id", tok))[0]

    async def test_a_timed_fault_ends_by_itself_and_leaves_nothing_active(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        """The request path's check is `Faults.active`: an empty tuple again afterwards."""
        await lab.fault(kind="status", duration=1.5)
        assert 503 == (await get(http, lab.running.url, "/latest/meta-data/"))[0]
        faults = lab.running.lab.faults  # type: ignore[union-attr]
        await until(lambda: () == faults.active, 5.0, "the fault to end")
        assert 401 == (await get(http, lab.running.url, "/latest/meta-data/"))[0]


class TestLatencyFault:
    async def test_delays_the_answer_then_answers_normally(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        """SDK timeouts are 1 s (botocore) or 500 ms to the header (Go) [S-PY-06] [S-GO-04]."""
        tok = await token(http, lab.running.url)
        await lab.fault(kind="latency", delay=0.4, count=1)
        started = time.perf_counter()
        status, body = await get(http, lab.running.url, "/latest/meta-data/instance-id", tok)
        slow = time.perf_counter() - started
        started = time.perf_counter()
        await get(http, lab.running.url, "/latest/meta-data/instance-id", tok)
        fast = time.perf_counter() - started
        assert (200, True) == (status, body.startswith(b"i-"))
        assert slow >= 0.4
        # Not delayed: count=1 was used up (a delayed answer would take at least 0.4 s).
        assert fast < 0.4


class TestDropFault:
    async def test_reset_mode_resets_the_connection_without_an_answer(
        self, lab: ControlAPI
    ) -> None:
        """[T-22] "Connection reset by peer", as one capture from a pod saw."""
        await lab.fault(kind="drop", mode="reset", count=1)
        with pytest.raises(ConnectionResetError):
            await rawhttp.send(lab.running.url, rawhttp.request("GET", "/latest/meta-data/"))
        answer = await rawhttp.send(lab.running.url, rawhttp.request("GET", "/latest/meta-data/"))
        assert answer is not None and 401 == answer.status

    async def test_close_mode_closes_without_a_byte(self, lab: ControlAPI) -> None:
        await lab.fault(kind="drop", mode="close", count=1)
        parts = urlsplit(lab.running.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(rawhttp.request("PUT", "/latest/api/token",
                                     {"X-aws-ec2-metadata-token-ttl-seconds": "60"}))
        assert b"" == await asyncio.wait_for(reader.read(), 5)
        writer.close()

    async def test_dropped_requests_are_counted_as_dropped(self, lab: ControlAPI) -> None:
        await lab.fault(kind="drop", mode="close", count=1)
        assert None is await rawhttp.send(lab.running.url,
                                          rawhttp.request("GET", "/latest/meta-data/"))
        counted = lab.running.lab.requests  # type: ignore[union-attr]
        assert 1 == counted[("/latest/meta-data/", "dropped")]


class TestTokenFault:
    @pytest.mark.parametrize("status", [403, 404, 405])
    async def test_token_put_answers_the_status_that_means_no_imdsv2(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, status: int
    ) -> None:
        """[T-19] 403/404/405 on the PUT; the GETs keep working without a token (v1)."""
        lab = ControlAPI(http, await imds_factory(http_tokens="optional"))
        await lab.fault(kind="token", status=status)
        async with http.put(lab.running.url + "/latest/api/token",
                            headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"}) as r:
            assert status == r.status
        assert 200 == (await get(http, lab.running.url, CREDENTIALS))[0]

    async def test_only_the_token_put_is_affected(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        tok = await token(http, lab.running.url)
        await lab.fault(kind="token")
        assert 200 == (await get(http, lab.running.url, "/latest/meta-data/ami-id", tok))[0]
        async with http.get(lab.running.url + "/latest/api/token") as r:
            assert 405 == r.status  # [T-11] still the real answer to a GET


class TestSourceFault:
    async def test_rotation_fails_while_the_source_is_down_then_works(
        self, lab: ControlAPI
    ) -> None:
        """An STS outage, without touching STS: the source's fetch itself fails."""
        await lab.fault(kind="source", count=1)
        status, data = await lab.call("POST", "/api/rotate")
        assert 503 == status
        assert "simulated source outage" in data["error"]
        rotated = await lab.ok("POST", "/api/rotate")
        rotations = (await lab.status())["roles"]["imds-local-role"]["rotations"]
        assert [True, False, True] == [r["ok"] for r in rotations]
        assert rotated["key"] == rotations[-1]["key"]

    async def test_past_expiry_imds_answers_cannot_assume_role_by_default(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        """Without the L-04 mode the expired keys are not served: EC2's [C-06] document."""
        lab = ControlAPI(http, await imds_factory(credential_lifetime=1, refresh_ahead=0))
        await lab.fault(kind="source")
        await asyncio.sleep(1.3)
        tok = await token(http, lab.running.url)
        status, body = await get(http, lab.running.url, CREDENTIALS, tok)
        assert (200, "AssumeRoleUnauthorizedAccess") == (status, json.loads(body)["Code"])

    async def test_with_the_expired_fault_imds_keeps_serving_the_last_keys(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        """[L-04] static stability: the last credentials, past their Expiration."""
        lab = ControlAPI(http, await imds_factory(credential_lifetime=1, refresh_ahead=0))
        # The source fails first, so no refresh can replace the keys read next.
        await lab.fault(kind="source")
        current = lab.running.rotator.current
        assert current is not None
        await lab.fault(kind="expired")
        await asyncio.sleep(1.3)
        tok = await token(http, lab.running.url)
        status, body = await get(http, lab.running.url, CREDENTIALS, tok)
        document = json.loads(body)
        assert 200 == status
        assert current.credentials.access_key_id == document["AccessKeyId"]
        assert expiration(body) <= dt.datetime.now(dt.UTC)


class TestExpiredAndRevoked:
    async def test_expired_fault_states_a_past_expiration_for_the_same_keys(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        tok = await token(http, lab.running.url)
        _, before = await get(http, lab.running.url, CREDENTIALS, tok)
        await lab.fault(kind="expired", count=1)
        _, during = await get(http, lab.running.url, CREDENTIALS, tok)
        _, after = await get(http, lab.running.url, CREDENTIALS, tok)
        assert json.loads(before)["AccessKeyId"] == json.loads(during)["AccessKeyId"]
        assert expiration(during) <= dt.datetime.now(dt.UTC) < expiration(before)
        assert before == after

    async def test_expired_applies_to_the_extended_document_with_its_account_id(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        """[X-01]"""
        lab = ControlAPI(http, await imds_factory(extended_credentials=True))
        tok = await token(http, lab.running.url)
        await lab.fault(kind="expired")
        path = CREDENTIALS.replace("security-credentials", "security-credentials-extended")
        _, body = await get(http, lab.running.url, path, tok)
        assert "123456789012" == json.loads(body)["AccountId"]
        assert expiration(body) <= dt.datetime.now(dt.UTC)

    async def test_expire_action_lasts_until_the_next_rotation(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        tok = await token(http, lab.running.url)
        fault = await lab.ok("POST", "/api/expire")
        _, first = await get(http, lab.running.url, CREDENTIALS, tok)
        _, second = await get(http, lab.running.url, CREDENTIALS, tok)
        assert expiration(first) <= dt.datetime.now(dt.UTC)
        assert first == second  # not a count: until the keys change
        rotated = await lab.ok("POST", "/api/rotate")
        _, fresh = await get(http, lab.running.url, CREDENTIALS, tok)
        assert rotated["key"][-4:] == json.loads(fresh)["AccessKeyId"][-4:]
        assert expiration(fresh) > dt.datetime.now(dt.UTC)
        history = {f["id"]: f for f in (await lab.status())["fault_history"]}
        assert "rotated" == history[fault["id"]]["end_reason"]

    async def test_revoke_serves_cannot_assume_role_until_the_next_rotation(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        """[C-06] role still listed, no keys in the document."""
        tok = await token(http, lab.running.url)
        await lab.ok("POST", "/api/revoke")
        status, listing = await get(http, lab.running.url,
                                    "/latest/meta-data/iam/security-credentials/", tok)
        assert (200, b"imds-local-role") == (status, listing)
        _, body = await get(http, lab.running.url, CREDENTIALS, tok)
        document = json.loads(body)
        assert "AssumeRoleUnauthorizedAccess" == document["Code"]
        assert "AccessKeyId" not in document
        await lab.ok("POST", "/api/rotate")
        _, body = await get(http, lab.running.url, CREDENTIALS, tok)
        assert "Success" == json.loads(body)["Code"]

    async def test_revoke_recorded_against_the_client_that_fetched(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        tok = await token(http, lab.running.url)
        await lab.ok("POST", "/api/revoke")
        await get(http, lab.running.url, CREDENTIALS, tok)
        fetch = (await lab.status())["fetches"][-1]
        assert ("127.0.0.1", "", "revoked") == (fetch["client"], fetch["key"], fetch["fault"])


class TestBodyFault:
    @pytest.mark.parametrize("mode", ["empty", "truncated"])
    async def test_a_200_with_a_broken_body(
        self, lab: ControlAPI, http: aiohttp.ClientSession, mode: str
    ) -> None:
        """[S-PY-04] botocore retries an empty body and invalid credential JSON."""
        tok = await token(http, lab.running.url)
        _, whole = await get(http, lab.running.url, CREDENTIALS, tok)
        await lab.fault(kind="body", mode=mode, count=1)
        status, broken = await get(http, lab.running.url, CREDENTIALS, tok)
        assert 200 == status
        if mode == "empty":
            assert b"" == broken
        else:
            assert whole.startswith(broken) and 0 < len(broken) < len(whole)
            with pytest.raises(ValueError):
                json.loads(broken)


class TestSpecValidation:
    @pytest.mark.parametrize(
        "spec, field",
        [
            pytest.param({"kind": "flood"}, "kind", id="unknown-kind"),
            pytest.param({"kind": "status", "status": 200}, "status", id="status-not-error"),
            pytest.param({"kind": "token", "status": 500}, "status", id="token-not-fallback"),
            pytest.param({"kind": "latency", "delay": -1}, "delay", id="negative-delay"),
            pytest.param({"kind": "status", "paths": ["latest"]}, "paths", id="relative-path"),
            pytest.param({"kind": "expired", "paths": ["/x"]}, "paths", id="fixed-target"),
            pytest.param({"kind": "drop", "mode": "explode"}, "mode", id="bad-mode"),
            pytest.param({"kind": "status", "count": 0}, "count", id="zero-count"),
            pytest.param({"kind": "status", "delay": 1}, "delay", id="delay-on-status"),
            pytest.param({"kind": "status", "colour": "red"}, "unknown", id="unknown-field"),
        ],
    )
    async def test_a_bad_spec_is_a_400_naming_the_field(
        self, lab: ControlAPI, spec: dict[str, object], field: str
    ) -> None:
        status, data = await lab.call("POST", "/api/faults", spec)
        assert 400 == status
        assert field in data["error"]
        with pytest.raises(FaultError, match=field):
            FaultSpec.parse(spec)

    def test_credential_paths_are_recognised_on_every_version(self) -> None:
        assert ("r", False) == tuple(vars_of(credential_path(
            "/2009-04-04/meta-data/iam/security-credentials/r")))
        assert ("r", True) == tuple(vars_of(credential_path(
            "/latest/meta-data/iam/security-credentials-extended/r/")))
        assert None is credential_path("/latest/meta-data/iam/security-credentials/")
        assert None is credential_path(
            "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance")


def vars_of(path: object) -> tuple[object, ...]:
    assert path is not None
    return (path.role, path.extended)  # type: ignore[attr-defined]


class TestNoFault:
    async def test_nothing_is_active_on_a_fresh_server(self, imds: Running) -> None:
        """The whole cost of faults on the request path is reading this empty tuple."""
        assert imds.lab is not None
        assert () == imds.lab.faults.active
