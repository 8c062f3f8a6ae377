"""
The ECS task-credential and EKS Pod Identity endpoints on a real server, over real sockets:
what each answers [K-04] [K-05] [K-07] [K-08], who may ask, and that every endpoint serves
a role from the one rotation the role has.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from imds.containers.satoken import load_or_create_key, mint
from imds.server import Running
from tests.conftest import ServerFactory
from tests.support.sts_support import StsProxy

TOKEN = "ecs-token-for-the-tests-0123456789"
ECS_KEYS = ["RoleArn", "AccessKeyId", "SecretAccessKey", "Token", "Expiration"]
POD_KEYS = ["AccessKeyId", "SecretAccessKey", "Token", "AccountId", "Expiration"]
# [K-07] RFC 3339 with a fraction; JS parses Expiration strictly [K-09].
NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


async def fetch(http: aiohttp.ClientSession, url: str,
                headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with http.get(url, headers=headers or {}) as response:
        return response.status, response.content_type, await response.text()


async def imds_key(http: aiohttp.ClientSession, running: Running, role: str) -> str:
    async with http.put(running.url + "/latest/api/token",
                        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}) as r:
        token = await r.text()
    _, _, body = await fetch(http, f"{running.url}/latest/meta-data/iam/security-credentials/"
                                   f"{role}", {"X-aws-ec2-metadata-token": token})
    key: str = json.loads(body)["AccessKeyId"]
    return key


def pod_token(running: Running, *, namespace: str = "default", service_account: str = "app",
              pod_name: str = "app-0", **claims: object) -> str:
    key = load_or_create_key(running.config.state_dir)
    return mint(key, namespace=namespace, service_account=service_account,
                pod_name=pod_name, **claims)  # type: ignore[arg-type]


class TestEcs:
    async def test_full_uri_flow_serves_the_agents_document_of_the_servers_own_role(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(container_token=TOKEN)
        status, content_type, body = await fetch(
            http, f"{running.url}/v2/credentials/{running.ecs_task}", {"Authorization": TOKEN})
        assert (200, "application/json") == (status, content_type)
        document = json.loads(body)
        assert ECS_KEYS == list(document)
        assert "arn:aws:iam::123456789012:role/imds-local-role" == document["RoleArn"]
        # One rotation per role: IMDS serves the very same key.
        assert await imds_key(http, running, "imds-local-role") == document["AccessKeyId"]

    async def test_legacy_v1_path_takes_the_id_from_the_query(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(container_token=TOKEN)
        v1 = await fetch(http, f"{running.url}/v1/credentials?id={running.ecs_task}",
                         {"Authorization": TOKEN})
        v2 = await fetch(http, f"{running.url}/v2/credentials/{running.ecs_task}",
                         {"Authorization": TOKEN})
        assert 200 == v1[0]
        assert v1 == v2

    async def test_each_task_gets_its_own_role(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(container_token=TOKEN,
                                     ecs_task=["web=web-role", "batch=batch-role"])
        docs = {}
        for task in ("web", "batch"):
            status, _, body = await fetch(http, f"{running.url}/v2/credentials/{task}",
                                          {"Authorization": TOKEN})
            assert 200 == status
            docs[task] = json.loads(body)
        assert docs["web"]["RoleArn"].endswith(":role/web-role")
        assert docs["batch"]["RoleArn"].endswith(":role/batch-role")
        assert docs["web"]["AccessKeyId"] != docs["batch"]["AccessKeyId"]

    @pytest.mark.parametrize(("headers", "status", "code"), [
        ({}, 401, "MissingAuthorizationToken"),
        ({"Authorization": TOKEN + "x"}, 403, "InvalidAuthorizationToken"),
        ({"Authorization": "Bearer " + TOKEN}, 403, "InvalidAuthorizationToken"),
    ])
    async def test_full_uri_flow_without_the_right_token_gets_no_credentials(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession,
        headers: dict[str, str], status: int, code: str
    ) -> None:
        running = await imds_factory(container_token=TOKEN)
        got, content_type, body = await fetch(
            http, f"{running.url}/v2/credentials/{running.ecs_task}", headers)
        assert (status, "application/json") == (got, content_type)
        assert code == json.loads(body)["code"]
        assert "AccessKeyId" not in body

    async def test_relative_uri_flow_needs_no_token(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        # What an SDK sends to http://169.254.170.2$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI [K-01].
        running = await imds_factory(container_token=TOKEN)
        status, _, body = await fetch(http, f"{running.url}/v2/credentials/{running.ecs_task}",
                                      {"Host": "169.254.170.2"})
        assert 200 == status
        assert "AccessKeyId" in json.loads(body)

    @pytest.mark.parametrize(("path", "code"), [
        ("/v2/credentials/", "NoIdInRequest"),
        ("/v2/credentials", "NoIdInRequest"),
        ("/v1/credentials?id=", "NoIdInRequest"),
        ("/v2/credentials/no-such-task", "InvalidIdInRequest"),
        ("/v1/credentials?id=no-such-task", "InvalidIdInRequest"),
    ])
    async def test_missing_or_unknown_ids_get_the_agents_400(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, path: str, code: str
    ) -> None:
        running = await imds_factory(container_token=TOKEN)
        status, content_type, body = await fetch(http, running.url + path,
                                                 {"Authorization": TOKEN})
        assert (400, "application/json", code) == (status, content_type,
                                                    json.loads(body)["code"])

    async def test_the_generated_token_is_kept_private_in_the_state_directory(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        running = await imds_factory(state_dir=str(tmp_path / "state"))
        path = tmp_path / "state" / "container-token"
        assert 0o600 == path.stat().st_mode & 0o777
        token = path.read_text().strip()
        status, _, _ = await fetch(http, f"{running.url}/v2/credentials/{running.ecs_task}",
                                   {"Authorization": token})
        assert 200 == status
        # The default task id is kept too: a restart serves the same path.
        assert running.ecs_task == (tmp_path / "state" / "ecs-task-id").read_text().strip()


class TestPodIdentity:
    async def test_a_pod_gets_the_agents_document(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory()
        status, content_type, body = await fetch(http, running.url + "/v1/credentials",
                                                 {"Authorization": pod_token(running)})
        assert (200, "application/json") == (status, content_type)
        document = json.loads(body)
        assert POD_KEYS == list(document)
        assert "123456789012" == document["AccountId"]
        assert NANO.fullmatch(document["Expiration"])
        assert await imds_key(http, running, "imds-local-role") == document["AccessKeyId"]

    async def test_associations_pick_the_role_of_each_service_account(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(pod_identity_association=["shop/web=web-role",
                                                               "shop/worker=worker-role"])
        web = await fetch(http, running.url + "/v1/credentials", {
            "Authorization": pod_token(running, namespace="shop", service_account="web")})
        worker = await fetch(http, running.url + "/v1/credentials", {
            "Authorization": pod_token(running, namespace="shop", service_account="worker")})
        assert 200 == web[0] == worker[0]
        assert json.loads(web[2])["AccessKeyId"] != json.loads(worker[2])["AccessKeyId"]
        assert await imds_key(http, running, "imds-local-role") not in (web[2] + worker[2])
        status, content_type, body = await fetch(http, running.url + "/v1/credentials", {
            "Authorization": pod_token(running, namespace="shop", service_account="other")})
        assert (404, "text/plain") == (status, content_type)
        assert "AccessKeyId" not in body

    @pytest.mark.parametrize("host", ["10.1.2.3", "169.254.170.2", "169.254.169.254"])
    async def test_a_request_through_another_address_is_refused(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, host: str
    ) -> None:
        running = await imds_factory()
        status, content_type, body = await fetch(http, running.url + "/v1/credentials", {
            "Authorization": pod_token(running), "Host": host})
        if host == "169.254.170.2":
            # ECS's own address: the ECS agent's legacy path, which wants an id [K-05].
            assert 400 == status
            assert "NoIdInRequest" in body
            return
        assert (403, "text/plain") == (status, content_type)
        assert "Called agent through invalid address\n" == body

    @pytest.mark.parametrize("host", ["169.254.170.23", "[fd00:ec2::23]", "169.254.170.23:80"])
    async def test_the_agents_own_addresses_are_accepted(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, host: str
    ) -> None:
        running = await imds_factory()
        status, _, _ = await fetch(http, running.url + "/v1/credentials", {
            "Authorization": pod_token(running), "Host": host})
        assert 200 == status

    @pytest.mark.parametrize(("claims", "reason"), [
        ({"now": time.time() - 7200, "lifetime": 600}, "expired"),
        ({"now": time.time() + 3600}, "not valid yet"),
    ])
    async def test_a_token_out_of_its_time_gets_400_in_plain_text(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession,
        claims: dict[str, float], reason: str
    ) -> None:
        running = await imds_factory()
        status, content_type, body = await fetch(http, running.url + "/v1/credentials", {
            "Authorization": pod_token(running, **claims)})
        assert (400, "text/plain") == (status, content_type)
        assert reason in body

    async def test_a_token_signed_by_another_key_or_garbage_gets_400(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        running = await imds_factory()
        other = mint(load_or_create_key(str(tmp_path)), namespace="default",
                     service_account="app")
        for token in (other, "not-a-jwt", ""):
            headers = {"Authorization": token} if token else {}
            status, content_type, body = await fetch(http, running.url + "/v1/credentials",
                                                     headers)
            assert (400, "text/plain") == (status, content_type), token
            assert "AccessKeyId" not in body

    async def test_requests_over_the_rate_get_429(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(pod_identity_rate=3)
        headers = {"Authorization": pod_token(running)}
        statuses = [(await fetch(http, running.url + "/v1/credentials", headers))[0]
                    for _ in range(6)]
        assert 200 == statuses[0]
        assert 429 in statuses


ROLE = "arn:aws:iam::111122223333:role/pods"


class TestPodIdentitySessions:
    async def test_an_sts_role_is_assumed_once_per_pod_with_eks_session_tags(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, sts: StsProxy
    ) -> None:
        running = await imds_factory(pod_identity_association=[f"shop/web={ROLE}"],
                                     sts_endpoint_url=sts.url)
        before = len(sts.calls("AssumeRole"))
        keys = []
        uids = {"web-1": str(uuid.uuid4()), "web-2": str(uuid.uuid4())}
        for pod in ("web-1", "web-2", "web-1"):
            # A fresh token each time, as kubelet rotates it; the pod stays the same.
            status, _, body = await fetch(http, running.url + "/v1/credentials", {
                "Authorization": pod_token(running, namespace="shop", service_account="web",
                                           pod_name=pod, pod_uid=uids[pod])})
            assert 200 == status, body
            keys.append(json.loads(body)["AccessKeyId"])
            assert "111122223333" == json.loads(body)["AccountId"]
        calls = [c for c in sts.calls("AssumeRole")[before:] if c.params["RoleArn"] == ROLE]
        # Two pods, two sessions; the third request is web-1's again.
        assert 2 == len(calls)
        assert keys[0] == keys[2] != keys[1]
        tags = {calls[0].params[f"Tags.member.{i}.Key"]: calls[0].params[f"Tags.member.{i}.Value"]
                for i in range(1, 7)}
        assert {"eks-cluster-arn": "arn:aws:eks:us-east-1:123456789012:cluster/imds-local",
                "eks-cluster-name": "imds-local", "kubernetes-namespace": "shop",
                "kubernetes-service-account": "web", "kubernetes-pod-name": "web-1",
                "kubernetes-pod-uid": uids["web-1"]} == tags
        transitive = {v for k, v in calls[0].params.items() if k.startswith("TransitiveTagKeys")}
        assert set(tags) == transitive
