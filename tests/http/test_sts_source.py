"""
The STS-backed source against a real STS-compatible server: moto in server mode on a
loopback port, behind a counting proxy that can also take STS away (tests/support/sts_support.py).

Durations below STS's 900 s minimum (only moto grants them) let rotations and expiry be
watched in seconds; they are real sessions with real expiry times, served by the real
rotator over HTTP.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest

from imds.config import load
from imds.creds.sources.sts import AssumeRoleSource, trusts_ec2
from imds.creds.sources.sts_request import AssumeRoleSettings
from imds.errors import SourceError, StartupError
from imds.server import Running, start
from tests.conftest import ServerFactory, make_config
from tests.support.polling import until
from tests.support.sts_support import BASE_KEY_ID, BASE_SECRET, StsProxy

ROLE_A = "arn:aws:iam::111122223333:role/app"
ROLE_B = "arn:aws:iam::444455556666:role/deploy/cross-account"
TOKEN_TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "300"}
ACCESS_DENIED = ("User: arn:aws:iam::123456789012:user/moto is not authorized to perform: "
                 f"sts:AssumeRole on resource: {ROLE_A}")


@pytest.fixture(autouse=True)
def no_way_to_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should any call miss the test endpoints, it goes (https) to a closed loopback port."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")


@pytest.fixture
def base_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", BASE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", BASE_SECRET)


@pytest.fixture
def sts(moto_url: str) -> Iterator[StsProxy]:
    proxy = StsProxy(moto_url).start()
    yield proxy
    proxy.close()


def make_source(
    sts: StsProxy, *arns: str, duration: int = 900, **settings: Any
) -> AssumeRoleSource:
    config = AssumeRoleSettings(role_arns=arns or (ROLE_A,), session_name="imds-test",
                                duration=duration, endpoint_url=sts.url, **settings)
    # botocore refuses DurationSeconds < 900 before sending; moto grants it.
    options = {"parameter_validation": False} if duration < 900 else None
    return AssumeRoleSource(config, client_options=options)


async def token(http: aiohttp.ClientSession, running: Running) -> dict[str, str]:
    async with http.put(f"{running.url}/latest/api/token", headers=TOKEN_TTL) as response:
        return {"X-aws-ec2-metadata-token": await response.text()}


async def get(http: aiohttp.ClientSession, running: Running, path: str) -> str:
    headers = await token(http, running)
    async with http.get(f"{running.url}/latest/meta-data/{path}", headers=headers) as response:
        assert 200 == response.status, path
        return await response.text()


async def served(http: aiohttp.ClientSession, running: Running) -> dict[str, str]:
    """The credential document, fetched the way SDKs do: token, role listing, role."""
    role = await get(http, running, "iam/security-credentials/")
    return json.loads(await get(http, running, f"iam/security-credentials/{role}"))


def caller_arn(endpoint: str, doc: dict[str, str]) -> str:
    """STS GetCallerIdentity signed with the given keys."""
    client = boto3.session.Session().client(
        "sts", region_name="us-east-1", endpoint_url=endpoint,
        aws_access_key_id=doc["AccessKeyId"], aws_secret_access_key=doc["SecretAccessKey"],
        aws_session_token=doc.get("Token"))
    return client.get_caller_identity()["Arn"]


def expiry(doc: dict[str, str]) -> float:
    stamp = dt.datetime.strptime(doc["Expiration"], "%Y-%m-%dT%H:%M:%SZ")
    return stamp.replace(tzinfo=dt.UTC).timestamp()


@pytest.mark.usefixtures("base_keys")
class TestServedKeys:
    async def test_served_keys_are_the_assumed_roles_not_the_base_keys(
        self, sts: StsProxy, moto_url: str, imds_factory: ServerFactory,
        http: aiohttp.ClientSession,
    ) -> None:
        running = await imds_factory(source=make_source(sts))
        doc = await served(http, running)

        (call,) = sts.calls("AssumeRole")
        assert (BASE_KEY_ID, call.issued_key_id) == (call.signed_by, doc["AccessKeyId"])
        assert doc["AccessKeyId"].startswith("ASIA")
        assert BASE_SECRET != doc["SecretAccessKey"]
        served_as = await asyncio.to_thread(caller_arn, moto_url, doc)
        base = {"AccessKeyId": BASE_KEY_ID, "SecretAccessKey": BASE_SECRET}
        base_as = await asyncio.to_thread(caller_arn, moto_url, base)
        assert "arn:aws:sts::111122223333:assumed-role/app/imds-test" == served_as
        assert served_as != base_as

    async def test_iam_info_shows_an_instance_profile_in_the_roles_account(
        self, sts: StsProxy, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(source=make_source(sts, ROLE_B))
        info = json.loads(await get(http, running, "iam/info"))
        listing = await get(http, running, "iam/security-credentials/")

        assert "cross-account" == listing
        assert "Success" == info["Code"]
        assert ("arn:aws:iam::444455556666:instance-profile/deploy/cross-account"
                == info["InstanceProfileArn"])
        assert info["InstanceProfileId"] == make_source(sts, ROLE_B).role.instance_profile_id
        assert info["InstanceProfileId"] != make_source(sts, ROLE_A).role.instance_profile_id
        assert len(info["InstanceProfileId"]) == 21
        assert set(info["InstanceProfileId"][4:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        assert info["InstanceProfileId"].startswith("AIPA")

    async def test_base_credentials_never_appear_in_documents_logs_or_files(
        self, sts: StsProxy, imds_factory: ServerFactory, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """imds logs at debug; botocore at info at most, as `imds.logs.configure` sets it."""
        home = tmp_path / "home"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        # --check-trust's IAM calls go to the test server too, never to AWS.
        monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", sts.url)
        caplog.set_level(logging.INFO)
        caplog.set_level(logging.DEBUG, logger="imds")
        running = await imds_factory(source=make_source(sts, ROLE_A, ROLE_B, check_trust=True))
        bodies = []
        for _ in range(2):
            for path in ("iam/info", "iam/security-credentials/"):
                bodies.append(await get(http, running, path))
            doc = await served(http, running)
            bodies.append(json.dumps(doc))
            await running.rotator.rotate_now()

        everything = "\n".join(bodies) + caplog.text
        assert BASE_KEY_ID not in everything
        assert BASE_SECRET not in everything
        # Nor the served secrets or full key ids in the logs: key ids by their last 4.
        assert "rotated credentials" in caplog.text
        assert doc["SecretAccessKey"] not in caplog.text
        assert doc["Token"] not in caplog.text
        assert doc["AccessKeyId"] not in caplog.text
        assert doc["AccessKeyId"][-4:] in caplog.text
        assert [] == list(home.rglob("*"))


@pytest.mark.usefixtures("base_keys")
class TestRotation:
    async def test_new_keys_are_served_before_the_old_expire_over_several_rotations(
        self, sts: StsProxy, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        # 4 s sessions with the default 300 s refresh-ahead: the window is half the
        # lifetime, so each generation is served for about two seconds.
        running = await imds_factory(source=make_source(sts, duration=4))
        first_seen: dict[str, float] = {}
        expires: dict[str, float] = {}
        deadline = time.monotonic() + 20
        while len(first_seen) < 4 and time.monotonic() < deadline:
            doc = await served(http, running)
            assert "Success" == doc["Code"]
            first_seen.setdefault(doc["AccessKeyId"], time.time())
            expires[doc["AccessKeyId"]] = expiry(doc)
            await asyncio.sleep(0.1)

        keys = list(first_seen)
        assert len(keys) >= 4, f"only {len(keys)} generations in 20 s"
        for old, new in pairwise(keys):
            assert first_seen[new] < expires[old], "a new key must come before the old expires"
            assert expires[new] > expires[old]
        issued = [call.issued_key_id for call in sts.calls("AssumeRole")]
        # Every served key came from STS, and STS was asked once per generation (plus
        # possibly one rotation that happened after the last poll).
        assert keys == issued[: len(keys)]
        assert len(issued) <= len(keys) + 1

    async def test_many_clients_at_start_cause_one_assume_role(
        self, sts: StsProxy, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(source=make_source(sts))
        docs = await asyncio.gather(*(served(http, running) for _ in range(50)))
        assert 1 == len({doc["AccessKeyId"] for doc in docs})
        assert 1 == len(sts.calls("AssumeRole"))

    async def test_many_clients_across_a_rotation_cause_one_assume_role(
        self, sts: StsProxy, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        # 8 s keys rotate 3-4 s apart (half the life, less the whole-second cut): time
        # for 30 clients to finish after the first rotation before a second is due.
        running = await imds_factory(source=make_source(sts, duration=8))
        rotator = running.rotator
        assert rotator.current is not None
        first = rotator.current.credentials.access_key_id
        seen: set[str] = set()
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                seen.add((await served(http, running))["AccessKeyId"])

        clients = [asyncio.create_task(client()) for _ in range(30)]
        await until(lambda: rotator.current is not None
                    and rotator.current.credentials.access_key_id != first, 10, "a rotation")
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)

        calls = sts.calls("AssumeRole")
        assert 2 == len(calls) == rotator.fetches
        assert {call.issued_key_id for call in calls} == seen

    async def test_concurrent_refreshes_share_one_assume_role(
        self, sts: StsProxy, imds_factory: ServerFactory
    ) -> None:
        running = await imds_factory(source=make_source(sts))
        results = await asyncio.gather(*(running.rotator.refresh() for _ in range(25)))
        assert 1 == len({r.credentials.access_key_id for r in results})
        assert 2 == len(sts.calls("AssumeRole"))


@pytest.mark.usefixtures("base_keys")
class TestOutage:
    async def test_unexpired_keys_are_served_while_sts_is_down_then_rotation_resumes(
        self, sts: StsProxy, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(source=make_source(sts, duration=8))
        rotator = running.rotator
        before = await served(http, running)
        sts.down()
        await until(lambda: any(not event.ok for event in rotator.history), 8,
                    "a failed refresh")
        during = await served(http, running)
        assert time.time() < expiry(before), "the outage test must run before expiry"
        assert (before["AccessKeyId"], "Success") == (during["AccessKeyId"], during["Code"])
        assert "cannot reach STS" in next(e for e in rotator.history if not e.ok).error

        sts.up()
        await until(lambda: rotator.history[-1].ok, 10, "rotation to resume")
        after = await served(http, running)
        assert "Success" == after["Code"]
        assert after["AccessKeyId"] != before["AccessKeyId"]
        assert time.time() < expiry(before), "resumed before the old keys expired"

    async def test_expired_keys_give_way_to_ec2s_error_document_until_sts_returns(
        self, sts: StsProxy, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        running = await imds_factory(source=make_source(sts, duration=4))
        before = await served(http, running)
        sts.down()
        codes: list[tuple[float, str]] = []
        while not codes or codes[-1][1] == "Success":
            doc = await served(http, running)
            codes.append((time.time(), doc["Code"]))
            if doc["Code"] == "Success":
                assert before["AccessKeyId"] == doc["AccessKeyId"]
            else:
                # [C-06] EC2's answer when it cannot assume the instance role: no keys.
                assert "AssumeRoleUnauthorizedAccess" == doc["Code"]
                assert {"Code", "Message", "LastUpdated"} == set(doc)
                assert "EC2 cannot assume the role app." in doc["Message"]
            assert codes[-1][0] < expiry(before) + 10
            await asyncio.sleep(0.05)
        assert codes[-1][0] >= expiry(before), "valid keys were served up to their expiry"

        sts.up()
        deadline = time.monotonic() + 20
        while (doc := await served(http, running))["Code"] != "Success":
            assert time.monotonic() < deadline, "no recovery within 20 s of STS returning"
            await asyncio.sleep(0.1)
        assert doc["AccessKeyId"] != before["AccessKeyId"]
        assert time.time() < expiry(doc)


@pytest.mark.usefixtures("base_keys")
class TestWhatReachesSts:
    async def test_chained_role_is_assumed_with_the_first_roles_session(
        self, sts: StsProxy, moto_url: str, imds_factory: ServerFactory,
        http: aiohttp.ClientSession,
    ) -> None:
        running = await imds_factory(source=make_source(sts, ROLE_A, ROLE_B))
        doc = await served(http, running)

        first, second = sts.calls("AssumeRole")
        assert (ROLE_A, ROLE_B) == (first.params["RoleArn"], second.params["RoleArn"])
        assert BASE_KEY_ID == first.signed_by
        assert first.issued_key_id == second.signed_by
        assert second.issued_key_id == doc["AccessKeyId"]
        assert ("900", "900") == (first.params["DurationSeconds"],
                                  second.params["DurationSeconds"])
        served_as = await asyncio.to_thread(caller_arn, moto_url, doc)
        assert "arn:aws:sts::444455556666:assumed-role/cross-account/imds-test" == served_as

    async def test_session_policy_tags_and_ids_reach_sts_on_the_right_hop(
        self, sts: StsProxy, tmp_path: Path
    ) -> None:
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}]}
        policy_file = tmp_path / "policy.json"
        policy_file.write_text(json.dumps(policy, indent=4))
        config = load({
            "role_arn": [ROLE_A, ROLE_B], "policy_file": str(policy_file),
            "policy_arn": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
            "session_tag": ["team=blue", "env=dev"], "source_identity": "alice",
            "external_id": "ext-123", "role_session_name": "ci-run-7", "duration": "1800",
            "sts_endpoint_url": sts.url,
        }, {})
        source = AssumeRoleSource.from_config(config, time.time)
        await source.fetch()

        first, second = (call.params for call in sts.calls("AssumeRole"))
        assert {"RoleArn": ROLE_A, "RoleSessionName": "ci-run-7", "SourceIdentity": "alice",
                "DurationSeconds": "900"}.items() <= first.items()
        assert not {"Policy", "ExternalId", "Tags.member.1.Key"} & set(first)
        assert policy == json.loads(second["Policy"])
        assert {
            "RoleArn": ROLE_B, "RoleSessionName": "ci-run-7", "DurationSeconds": "1800",
            "ExternalId": "ext-123",
            "PolicyArns.member.1.arn": "arn:aws:iam::aws:policy/ReadOnlyAccess",
            "Tags.member.1.Key": "team", "Tags.member.1.Value": "blue",
            "Tags.member.2.Key": "env", "Tags.member.2.Value": "dev",
        }.items() <= second.items()
        # STS carries the source identity through the chain; setting it again is not needed.
        assert "SourceIdentity" not in second

    async def test_chained_sessions_are_capped_at_one_hour(
        self, sts: StsProxy, caplog: pytest.LogCaptureFixture
    ) -> None:
        source = make_source(sts, ROLE_A, ROLE_B, duration=7200)
        creds = await source.fetch()
        assert "3600" == sts.calls("AssumeRole")[-1].params["DurationSeconds"]
        assert 3600 == creds.lifetime
        assert "--duration 7200 lowered to 3600" in caplog.text

    async def test_endpoint_may_come_from_aws_endpoint_url_sts(
        self, sts: StsProxy, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        source = AssumeRoleSource(AssumeRoleSettings(role_arns=(ROLE_A,), session_name="x-1"))
        await source.fetch()
        assert [ROLE_A] == [call.params["RoleArn"] for call in sts.calls("AssumeRole")]

    async def test_profile_chooses_the_base_credentials(
        self, sts: StsProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With --profile, that profile's keys sign the call even when env keys exist."""
        credentials = tmp_path / "credentials"
        credentials.write_text("[dev]\naws_access_key_id = AKIAIMDSTESTPROFILE1\n"
                               "aws_secret_access_key = imdsTestProfileSecretNotReal\n")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
        await make_source(sts, profile="dev").fetch()
        assert ["AKIAIMDSTESTPROFILE1"] == [c.signed_by for c in sts.calls("AssumeRole")]


class TestFailures:
    @pytest.mark.usefixtures("base_keys")
    async def test_access_denied_is_not_retried_and_explains_the_trust_policy(
        self, sts: StsProxy
    ) -> None:
        sts.fail("AssumeRole", 403, "AccessDenied", ACCESS_DENIED)
        with pytest.raises(SourceError) as caught:
            await make_source(sts).fetch()
        message = str(caught.value)
        for needle in (ROLE_A, "AccessDenied", "not authorized", "trust policy must allow",
                       "ec2.amazonaws.com", "with your base credentials"):
            assert needle in message
        assert 1 == len(sts.calls("AssumeRole")), "a denial is not retried"

    @pytest.mark.usefixtures("base_keys")
    async def test_denial_of_a_chained_hop_names_the_session_that_asked(
        self, sts: StsProxy
    ) -> None:
        sts.fail("AssumeRole", 403, "AccessDenied", "not authorized", RoleArn=ROLE_B)
        with pytest.raises(SourceError,
                           match=f"sts:AssumeRole of {ROLE_B} with the session of {ROLE_A}"):
            await make_source(sts, ROLE_A, ROLE_B).fetch()

    @pytest.mark.usefixtures("base_keys")
    @pytest.mark.parametrize("status, code", [(400, "Throttling"), (503, "ServiceUnavailable")])
    async def test_throttling_and_server_errors_are_recoverable(
        self, sts: StsProxy, status: int, code: str
    ) -> None:
        source = make_source(sts)
        sts.fail("AssumeRole", status, code, "Rate exceeded")
        with pytest.raises(SourceError) as caught:
            await source.fetch()
        assert code in str(caught.value)
        sts.heal()
        assert (await source.fetch()).access_key_id.startswith("ASIA")

    @pytest.mark.usefixtures("base_keys")
    async def test_unreachable_sts_names_the_endpoint(
        self, sts: StsProxy
    ) -> None:
        source = make_source(sts)
        sts.down()
        with pytest.raises(SourceError) as caught:
            await source.fetch()
        assert f"cannot reach STS at {sts.url}" in str(caught.value)

    async def test_no_base_credentials_is_explained_and_never_asks_instance_metadata(
        self, sts: StsProxy, moto_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        trap = StsProxy(moto_url).start()
        try:
            monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", trap.url)
            with pytest.raises(SourceError, match="no AWS credentials were found"):
                await make_source(sts).fetch()
            assert [] == trap.calls()
            assert [] == sts.calls()
            # The trap works: boto3's own default chain does ask the metadata endpoint.
            await asyncio.to_thread(boto3.session.Session().get_credentials)
            assert trap.calls()
        finally:
            trap.close()

    @pytest.mark.usefixtures("base_keys")
    async def test_unknown_profile_is_permanent_and_named(self, sts: StsProxy) -> None:
        with pytest.raises(SourceError, match="profile 'nope' is not defined"):
            await make_source(sts, profile="nope").fetch()

    @pytest.mark.usefixtures("base_keys")
    async def test_startup_fails_with_the_explanation(self, sts: StsProxy) -> None:
        sts.fail("AssumeRole", 403, "AccessDenied", ACCESS_DENIED)
        with pytest.raises(StartupError, match="could not get the first credentials for role "
                                               "app: STS denied sts:AssumeRole"):
            await start(make_config(), source=make_source(sts))


def _trust(principal: Any, action: Any = "sts:AssumeRole", effect: str = "Allow") -> dict:
    return {"Version": "2012-10-17",
            "Statement": [{"Effect": effect, "Principal": principal, "Action": action}]}


class TestCheckTrust:
    @pytest.mark.parametrize(
        "document, trusted",
        [
            (_trust({"Service": "ec2.amazonaws.com"}), True),
            (_trust({"Service": ["lambda.amazonaws.com", "ec2.amazonaws.com"]}), True),
            (_trust({"Service": "ec2.amazonaws.com"}, ["sts:TagSession", "sts:*"]), True),
            (_trust("*"), True),
            (_trust({"AWS": "arn:aws:iam::111122223333:root"}), False),
            (_trust({"Service": "lambda.amazonaws.com"}), False),
            (_trust({"Service": "ec2.amazonaws.com"}, effect="Deny"), False),
            (_trust({"Service": "ec2.amazonaws.com"}, "sts:AssumeRoleWithWebIdentity"), False),
            # IAM's raw form: URL-encoded JSON.
            ("%7B%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B"
             "%22Service%22%3A%22ec2.amazonaws.com%22%7D%2C%22Action%22%3A%22sts%3AAssumeRole"
             "%22%7D%5D%7D", True),
        ],
    )
    def test_trusts_ec2_reads_trust_policies(self, document: Any, trusted: bool) -> None:
        assert trusted == trusts_ec2(document)

    @pytest.mark.usefixtures("base_keys")
    @pytest.mark.parametrize("trusted", [False, True])
    async def test_startup_warns_only_when_ec2_is_not_trusted(
        self, sts: StsProxy, moto_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, trusted: bool,
    ) -> None:
        name = f"check-{uuid.uuid4().hex[:8]}"
        principal = ({"Service": "ec2.amazonaws.com"} if trusted
                     else {"AWS": "arn:aws:iam::123456789012:root"})
        iam = boto3.session.Session().client("iam", region_name="us-east-1",
                                             endpoint_url=moto_url)
        arn = iam.create_role(RoleName=name,
                              AssumeRolePolicyDocument=json.dumps(_trust(principal)))["Role"]["Arn"]
        monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", sts.url)
        caplog.set_level(logging.INFO, logger="imds")
        source = make_source(sts, arn, check_trust=True)
        await source.fetch()
        await source.fetch()

        assert 1 == len(sts.calls("GetRole")), "checked once, at the first fetch"
        warned = f"the trust policy of role {name} does not allow ec2.amazonaws.com"
        assert (warned in caplog.text) is not trusted
        assert (f"role {name} trusts ec2.amazonaws.com" in caplog.text) is trusted
