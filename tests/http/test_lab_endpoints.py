"""
The rotation lab on all three endpoints, over real sockets: faults aimed at one endpoint,
`expired` and `revoked` as IMDS, ECS and Pod Identity each show them [L-04] [C-06] [K-05]
[K-08], and fetches counted and listed by the endpoint that served them.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from collections.abc import Callable

import aiohttp
import pytest

from imds.cli import main
from imds.server import Running
from tests.conftest import ServerFactory
from tests.http.test_container_endpoints import (
    ECS_KEYS,
    NANO,
    POD_KEYS,
    TOKEN,
    fetch,
    pod_token,
)
from tests.http.test_metrics import scrape
from tests.support.labutil import CREDENTIALS, ControlAPI, get, token
from tests.support.sts_support import StsProxy

SECONDS = "%Y-%m-%dT%H:%M:%SZ"


class Endpoints:
    """One credential fetch from each endpoint of one server: (status, type, body)."""

    def __init__(self, http: aiohttp.ClientSession, running: Running) -> None:
        self.http = http
        self.running = running

    async def imds(self) -> tuple[int, str, str]:
        tok = await token(self.http, self.running.url)
        return await fetch(self.http, self.running.url + CREDENTIALS,
                           {"X-aws-ec2-metadata-token": tok})

    async def ecs(self, task: str | None = None, *, v1: bool = False) -> tuple[int, str, str]:
        task = task or self.running.ecs_task
        path = f"/v1/credentials?id={task}" if v1 else f"/v2/credentials/{task}"
        return await fetch(self.http, self.running.url + path, {"Authorization": TOKEN})

    async def pod(self, **claims: str) -> tuple[int, str, str]:
        return await fetch(self.http, self.running.url + "/v1/credentials",
                           {"Authorization": pod_token(self.running, **claims)})


@pytest.fixture
async def lab(imds_factory: ServerFactory, http: aiohttp.ClientSession) -> ControlAPI:
    return ControlAPI(http, await imds_factory(container_token=TOKEN))


@pytest.fixture
def endpoints(lab: ControlAPI, http: aiohttp.ClientSession) -> Endpoints:
    return Endpoints(http, lab.running)


def expiry(body: str, fmt: str = SECONDS) -> dt.datetime:
    stated = json.loads(body)["Expiration"]
    if fmt == "nano":
        # Nine digits of fraction [K-07]: Python reads six.
        stated = stated[:26] + "Z"
        fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return dt.datetime.strptime(stated, fmt).replace(tzinfo=dt.UTC)


def past(when: dt.datetime) -> bool:
    return when <= dt.datetime.now(dt.UTC)


class TestFaultsByEndpoint:
    async def test_a_status_fault_aimed_at_ecs_hits_ecs_requests_only(
        self, lab: ControlAPI, endpoints: Endpoints
    ) -> None:
        fault = await lab.fault(kind="status", status=429, endpoint="ecs")
        assert "ecs" == fault["endpoint"]
        assert 429 == (await endpoints.ecs())[0]
        assert 429 == (await endpoints.ecs(v1=True))[0]
        assert 200 == (await endpoints.imds())[0]
        assert 200 == (await endpoints.pod())[0]
        hits = next(f for f in (await lab.status())["faults"] if f["id"] == fault["id"])
        assert 2 == hits["hits"]

    async def test_a_fault_without_endpoint_or_paths_hits_every_endpoint(
        self, lab: ControlAPI, endpoints: Endpoints
    ) -> None:
        await lab.fault(kind="status", count=3)
        statuses = [(await endpoints.ecs())[0], (await endpoints.pod())[0],
                    (await get(lab.http, lab.running.url, "/latest/meta-data/"))[0]]
        assert [503, 503, 503] == statuses
        assert 200 == (await endpoints.pod())[0]

    async def test_a_pod_identity_body_fault_leaves_the_other_endpoints_whole(
        self, lab: ControlAPI, endpoints: Endpoints
    ) -> None:
        await lab.fault(kind="body", mode="empty", endpoint="pod-identity")
        assert (200, "") == (await endpoints.pod())[::2]
        assert list(json.loads((await endpoints.ecs())[2])) == ECS_KEYS

    @pytest.mark.parametrize("spec, reason", [
        ({"kind": "status", "endpoint": "eks"}, "endpoint: expected one of imds, ecs"),
        ({"kind": "token", "endpoint": "ecs"}, "a token fault is IMDS's"),
        ({"kind": "source", "endpoint": "imds"}, "a source fault stops the rotation"),
    ])
    async def test_a_bad_endpoint_is_400(self, lab: ControlAPI, spec: dict[str, str],
                                         reason: str) -> None:
        status, body = await lab.call("POST", "/api/faults", spec)
        assert 400 == status
        assert reason in body["error"]

    async def test_expire_and_revoke_refuse_an_unknown_endpoint_or_field(
        self, lab: ControlAPI
    ) -> None:
        for body in ({"endpoint": "k8s"}, {"endpiont": "ecs"}, {"endpoint": 3}):
            status, answer = await lab.call("POST", "/api/expire", body)
            assert 400 == status, (body, answer)
        assert [] == (await lab.status())["faults"]


class TestExpired:
    async def test_expire_serves_every_endpoints_document_as_expired_in_its_own_format(
        self, lab: ControlAPI, endpoints: Endpoints
    ) -> None:
        """[L-04] the same keys, Expiration past; ECS in whole seconds [K-04], pods in
        nanoseconds [K-07]."""
        keys = {json.loads(b)["AccessKeyId"] for _, _, b in
                (await endpoints.imds(), await endpoints.ecs(), await endpoints.pod())}
        await lab.ok("POST", "/api/expire", {})
        imds, ecs, pod = await endpoints.imds(), await endpoints.ecs(), await endpoints.pod()
        assert 200 == imds[0] == ecs[0] == pod[0]
        assert keys == {json.loads(b)["AccessKeyId"] for _, _, b in (imds, ecs, pod)}
        assert ECS_KEYS == list(json.loads(ecs[2]))
        assert POD_KEYS == list(json.loads(pod[2]))
        assert NANO.fullmatch(json.loads(pod[2])["Expiration"])
        assert past(expiry(imds[2])) and past(expiry(ecs[2])) and past(expiry(pod[2], "nano"))
        assert "application/json" == ecs[1] == pod[1]
        fetched = [(f["endpoint"], f["fault"]) for f in (await lab.status())["fetches"]][-3:]
        assert [("imds", "expired"), ("ecs", "expired"), ("pod-identity", "expired")] == fetched

    async def test_expire_aimed_at_ecs_leaves_imds_and_pods_fresh(
        self, lab: ControlAPI, endpoints: Endpoints
    ) -> None:
        fault = await lab.ok("POST", "/api/expire", {"endpoint": "ecs"})
        assert "ecs" == fault["endpoint"]
        assert past(expiry((await endpoints.ecs(v1=True))[2]))
        assert not past(expiry((await endpoints.imds())[2]))
        assert not past(expiry((await endpoints.pod())[2], "nano"))

    async def test_an_unbound_expired_fault_on_pods_reaches_every_role_they_get(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(container_token=TOKEN,
                                     pod_identity_association=["shop/web=web-role"])
        lab, endpoints = ControlAPI(http, running), Endpoints(http, running)
        await lab.fault(kind="expired", endpoint="pod-identity", count=1)
        status, _, body = await endpoints.pod(namespace="shop", service_account="web")
        assert 200 == status
        assert past(expiry(body, "nano"))
        assert not past(expiry((await endpoints.ecs())[2]))
        # count 1: the next fetch is the real document again.
        assert not past(expiry((await endpoints.pod(namespace="shop",
                                                    service_account="web"))[2], "nano"))


class TestRevoked:
    async def test_revoke_answers_each_endpoints_cannot_have_the_role(
        self, lab: ControlAPI, endpoints: Endpoints
    ) -> None:
        """IMDS: C-06's 200 without keys; ECS: 503 CredentialsUninitialized [K-05];
        Pod Identity: the agent's 500 in plain text [K-08]."""
        await lab.ok("POST", "/api/revoke", {})
        status, _, body = await endpoints.imds()
        assert (200, "AssumeRoleUnauthorizedAccess") == (status, json.loads(body)["Code"])
        for v1, version in ((False, "V2"), (True, "V1")):
            status, content_type, body = await endpoints.ecs(v1=v1)
            assert (503, "application/json") == (status, content_type)
            assert {"code": "CredentialsUninitialized",
                    "message": f"Credentials{version}Request: Credentials uninitialized "
                               "for ID"} == json.loads(body)
        status, content_type, body = await endpoints.pod()
        assert (500, "text/plain") == (status, content_type)
        assert body.startswith("Failed to assume the role") and body.endswith("\n")
        assert "AccessKeyId" not in body
        # Each refusal is still a fetch on the timeline: that role, from that endpoint, no key.
        fetches = [(f["endpoint"], f["role"], f["key"], f["fault"])
                   for f in (await lab.status())["fetches"]]
        assert [("imds", "imds-local-role", "", "revoked"),
                ("ecs", "imds-local-role", "", "revoked"),
                ("ecs", "imds-local-role", "", "revoked"),
                ("pod-identity", "imds-local-role", "", "revoked")] == fetches

    async def test_a_rotation_ends_it_on_every_endpoint(
        self, lab: ControlAPI, endpoints: Endpoints
    ) -> None:
        await lab.ok("POST", "/api/revoke", {})
        assert 503 == (await endpoints.ecs())[0]
        rotated = await lab.ok("POST", "/api/rotate", {})
        for status, _, body in (await endpoints.ecs(), await endpoints.pod(),
                                await endpoints.imds()):
            assert 200 == status
            assert json.loads(body)["AccessKeyId"].endswith(rotated["key"][-4:])

    async def test_revoking_a_task_role_leaves_the_servers_own_role_served(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(container_token=TOKEN, ecs_task=["web=web-role"])
        lab, endpoints = ControlAPI(http, running), Endpoints(http, running)
        fault = await lab.ok("POST", "/api/revoke", {"role": "web-role", "endpoint": "ecs"})
        assert ("web-role", "ecs") == (fault["role"], fault["endpoint"])
        assert 503 == (await endpoints.ecs("web"))[0]
        assert 200 == (await endpoints.ecs())[0]
        assert 200 == (await endpoints.pod())[0]


class TestFetchesByEndpoint:
    async def test_status_names_the_endpoint_and_role_of_each_fetch(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(container_token=TOKEN, ecs_task=["web=web-role"],
                                     pod_identity_association=["shop/api=api-role"])
        lab, endpoints = ControlAPI(http, running), Endpoints(http, running)
        await endpoints.imds()
        await endpoints.ecs("web")
        await endpoints.ecs("web")  # the same bytes again: the fast path's kept answer
        await endpoints.ecs(v1=True)  # a query: aiohttp's path
        # The relative-URI flow [K-01]: no token, ECS's own Host.
        await fetch(http, f"{running.url}/v2/credentials/web", {"Host": "169.254.170.2"})
        await endpoints.pod(namespace="shop", service_account="api")
        fetches = (await lab.status())["fetches"]
        assert [("imds", "imds-local-role"), ("ecs", "web-role"), ("ecs", "web-role"),
                ("ecs", "imds-local-role"), ("ecs", "web-role"),
                ("pod-identity", "api-role")] == [(f["endpoint"], f["role"]) for f in fetches]
        assert all(len(f["key"]) < 16 for f in fetches)  # hints, never whole key ids

    async def test_a_pods_own_sts_session_is_named_by_its_role(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, sts: StsProxy
    ) -> None:
        role = "arn:aws:iam::111122223333:role/pods"
        running = await imds_factory(pod_identity_association=[f"shop/web={role}"],
                                     sts_endpoint_url=sts.url)
        status, _, _ = await Endpoints(http, running).pod(namespace="shop",
                                                          service_account="web")
        assert 200 == status
        last = (await ControlAPI(http, running).status())["fetches"][-1]
        assert ("pod-identity", "pods") == (last["endpoint"], last["role"])

    async def test_metrics_count_credential_fetches_by_endpoint(
        self, lab: ControlAPI, endpoints: Endpoints
    ) -> None:
        await endpoints.imds()
        await endpoints.ecs()
        await endpoints.ecs(v1=True)
        await endpoints.pod()
        await fetch(lab.http, lab.running.url + "/v2/credentials/nobody",
                    {"Authorization": TOKEN})
        samples = await scrape(lab)
        assert {"imds": 1, "ecs": 2, "pod-identity": 1} == {
            dict(labels)["endpoint"]: value
            for labels, value in samples["imds_credential_fetches_total"].items()}
        requests = {(dict(k)["path"], dict(k)["status"]): v
                    for k, v in samples["imds_requests_total"].items()}
        assert 1 == requests[("/v2/credentials/{id}", "200")]
        assert 1 == requests[("/v2/credentials/{id}", "400")]
        assert 2 == requests[("/v1/credentials", "200")]  # ECS's legacy path and the pod's


class TestCtl:
    def test_fault_and_expire_take_endpoint_and_status_shows_it(
        self, imds_thread: Callable[..., Running], capsys: pytest.CaptureFixture[str]
    ) -> None:
        running = imds_thread(container_token=TOKEN)
        assert running.control is not None
        ctl = ["ctl", "--control-url", running.control.url, "--control-token",
               running.control.token]
        assert 0 == main([*ctl, "fault", "status", "--status", "429", "--endpoint", "ecs",
                          "--count", "1"], {})
        assert "at ecs" in capsys.readouterr().out
        request = urllib.request.Request(f"{running.url}/v2/credentials/{running.ecs_task}",
                                         headers={"Authorization": TOKEN})
        # No proxy from the environment: the server is on loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(request, timeout=5)
        assert 429 == refused.value.code
        with opener.open(request, timeout=5) as response:
            assert 200 == response.status
        assert 0 == main([*ctl, "--json", "expire", "--endpoint", "pod-identity"], {})
        assert "pod-identity" == json.loads(capsys.readouterr().out)["endpoint"]
        assert 0 == main([*ctl, "status"], {})
        out = capsys.readouterr().out
        assert "at pod-identity" in out
        fetch_line = out.split("recent credential fetches:")[1].strip().splitlines()[-1]
        assert fetch_line.split()[1:3] == ["ecs", "127.0.0.1"]
        with pytest.raises(SystemExit) as refused_option:
            main([*ctl, "fault", "status", "--endpoint", "eks"], {})
        assert 2 == refused_option.value.code
        assert "invalid choice: 'eks'" in capsys.readouterr().err

