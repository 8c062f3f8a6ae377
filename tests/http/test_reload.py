"""
The role map and the Pod Identity associations read again when their files change, as a
Kubernetes ConfigMap volume changes them (imds.config.watch): real files, a real server,
callers on real loopback sockets (127.0.0.x, as in test_rolemap.py).

A ConfigMap volume is updated as kubelet does it (tests/support/configmap.py, spec K-15).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imds.config import load
from imds.config.watch import INVALID, MISSING, OK, UNAVAILABLE
from imds.containers.satoken import load_or_create_key, mint
from imds.creds.pool import RoleKey
from imds.errors import ConfigError
from imds.server import Running
from tests.conftest import ServerFactory
from tests.support.configmap import Volume, role_map
from tests.support.labutil import ControlAPI
from tests.support.polling import just_after_a_second_turns, until
from tests.support.sts_support import StsProxy

TOKEN = "X-aws-ec2-metadata-token"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
LISTING = "/latest/meta-data/iam/security-credentials/"
ROLE_ARN = "arn:aws:iam::111122223333:role/team/new"


@pytest.fixture
async def caller() -> AsyncIterator[Callable[[str], aiohttp.ClientSession]]:
    """HTTP clients that connect from a chosen loopback source address."""
    sessions: list[aiohttp.ClientSession] = []

    def make(source: str) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(force_close=True, local_addr=(source, 0))
        session = aiohttp.ClientSession(connector=connector)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        await session.close()


async def token(http: aiohttp.ClientSession, url: str) -> str:
    async with http.put(url + "/latest/api/token", headers={TTL: "300"}) as r:
        assert 200 == r.status
        return await r.text()


async def listing(http: aiohttp.ClientSession, url: str, tok: str) -> tuple[int, str]:
    async with http.get(url + LISTING, headers={TOKEN: tok}) as r:
        return r.status, await r.text()


async def role_of(http: aiohttp.ClientSession, url: str) -> str:
    status, role = await listing(http, url, await token(http, url))
    assert 200 == status
    return role


def reloads(running: Running, key: str, result: str) -> int:
    assert running.lab is not None
    return running.lab.config_reloads.get((key, result), 0)


def key_of(running: Running, role: str) -> str:
    assert running.pool is not None
    rotator = running.pool.get(RoleKey(role))
    assert rotator is not None and rotator.current is not None
    return rotator.current.credentials.access_key_id


class TestRoleMapReload:
    async def test_a_configmap_update_is_served_and_roles_still_mapped_keep_their_rotation(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path,
    ) -> None:
        """kubelet's symlink swap is seen by polling; role-b keeps its rotator and keys."""
        volume = Volume(tmp_path / "config")
        volume.write(**{"roles.toml": role_map(**{"127.0.0.2": "role-b",
                                                  "127.0.0.3": "role-c"})})
        running = await imds_factory(role_map=volume.path("roles.toml"),
                                     reload_interval="0.1")
        assert running.routes is not None
        kept = running.routes.rotators["role-b"]
        key_b = key_of(running, "role-b")
        assert "role-c" == await role_of(caller("127.0.0.3"), running.url)

        volume.write(**{"roles.toml": role_map(**{"127.0.0.2": "role-b",
                                                  "127.0.0.3": "role-d"})})
        await until(lambda: reloads(running, "role_map", OK) == 1, 5, "the reload")
        assert "role-d" == await role_of(caller("127.0.0.3"), running.url)
        assert "role-b" == await role_of(caller("127.0.0.2"), running.url)
        assert running.routes.rotators["role-b"] is kept
        assert key_b == key_of(running, "role-b")
        # The new role was primed before it was put in force, and rotates from then on.
        new = running.routes.rotators["role-d"]
        assert new.current is not None
        assert running.pool is not None and running.pool.get(RoleKey("role-d")) is new
        # One version, one reload: polling the same content again changes nothing.
        await asyncio.sleep(0.5)
        assert 1 == reloads(running, "role_map", OK)

    async def test_an_edit_in_place_and_a_rename_over_the_file_are_seen_too(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path,
    ) -> None:
        path = tmp_path / "roles.toml"
        path.write_text(role_map(**{"127.0.0.2": "role-b"}))
        running = await imds_factory(role_map=str(path), reload_interval="0")
        assert running.watch is not None
        # Same size, same mtime: only the content says it changed.
        stat = path.stat()
        path.write_text(role_map(**{"127.0.0.2": "role-x"}))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        await running.watch.check()
        assert "role-x" == await role_of(caller("127.0.0.2"), running.url)
        replacement = tmp_path / "roles.toml.new"
        replacement.write_text(role_map(**{"127.0.0.2": "role-y"}))
        replacement.rename(path)
        await running.watch.check()
        assert "role-y" == await role_of(caller("127.0.0.2"), running.url)
        assert 2 == reloads(running, "role_map", OK)

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            pytest.param("[clients\n", "not valid TOML", id="toml"),
            pytest.param('[clients]\n"10.0.0.300" = "x"\n', "address or CIDR", id="address"),
            pytest.param('[clients]\n"127.0.0.2" = "bad role!"\n', "neither an IAM role",
                         id="role"),
            pytest.param(b"\xff\xfe", "not UTF-8", id="binary"),
        ],
    )
    async def test_a_broken_replacement_keeps_the_old_map_and_is_logged_once_and_counted(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | bytes, message: str,
    ) -> None:
        volume = Volume(tmp_path / "config")
        volume.write(**{"roles.toml": role_map(**{"127.0.0.2": "role-b"})})
        running = await imds_factory(role_map=volume.path("roles.toml"), reload_interval="0")
        assert running.watch is not None
        volume.write(**{"roles.toml": "placeholder"})
        target = Path(volume.path("roles.toml")).resolve()
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
        with caplog.at_level(logging.INFO, logger="imds.reload"):
            await running.watch.check()
            await running.watch.check()
        assert "role-b" == await role_of(caller("127.0.0.2"), running.url)
        assert 1 == reloads(running, "role_map", INVALID)
        assert 0 == reloads(running, "role_map", OK)
        lines = [r.getMessage() for r in caplog.records if r.name == "imds.reload"]
        assert 1 == len(lines)
        assert lines[0].startswith("role_map ") and message in lines[0]
        assert "version in force stays" in lines[0] and "\n" not in lines[0]
        # Fixed: the next version is applied.
        volume.write(**{"roles.toml": role_map(**{"127.0.0.2": "role-z"})})
        await running.watch.check()
        assert "role-z" == await role_of(caller("127.0.0.2"), running.url)

    async def test_a_removed_file_keeps_the_old_map_until_a_new_version_comes(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
    ) -> None:
        volume = Volume(tmp_path / "config")
        first = role_map(**{"127.0.0.2": "role-b"})
        volume.write(**{"roles.toml": first})
        running = await imds_factory(role_map=volume.path("roles.toml"), reload_interval="0")
        assert running.watch is not None
        volume.write(**{"other.toml": "x = 1\n"})  # the key left the ConfigMap
        assert not os.path.exists(volume.path("roles.toml"))
        with caplog.at_level(logging.WARNING, logger="imds.reload"):
            await running.watch.check()
            await running.watch.check()
        assert "role-b" == await role_of(caller("127.0.0.2"), running.url)
        assert 1 == reloads(running, "role_map", MISSING)
        assert ["cannot be read"] == [
            "cannot be read" for r in caplog.records if "cannot be read" in r.getMessage()]
        # Back as it was: nothing to apply; then a new version is applied.
        volume.write(**{"roles.toml": first})
        await running.watch.check()
        assert 0 == reloads(running, "role_map", OK)
        volume.write(**{"roles.toml": role_map(**{"127.0.0.2": "role-c"})})
        await running.watch.check()
        assert "role-c" == await role_of(caller("127.0.0.2"), running.url)
        assert 1 == reloads(running, "role_map", OK)

    async def test_an_answer_kept_by_the_fast_path_is_not_sent_after_the_swap(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path,
    ) -> None:
        """The same request bytes, within the same second, get the new map's answer."""
        path = tmp_path / "roles.toml"
        path.write_text(role_map(**{"127.0.0.2": "role-b"}))
        running = await imds_factory(role_map=str(path), reload_interval="0")
        assert running.watch is not None and running.lab is not None
        http = caller("127.0.0.2")
        tok = await token(http, running.url)
        # Kept answers live within one second: the rest of the test fits in it.
        await just_after_a_second_turns()
        assert (200, "role-b") == await listing(http, running.url, tok)
        assert (200, "role-b") == await listing(http, running.url, tok)
        assert running.lab.fast_kept >= 1  # the second one was a kept answer
        path.write_text(role_map(**{"127.0.0.2": "role-c"}))
        await running.watch.check()
        assert (200, "role-c") == await listing(http, running.url, tok)

    async def test_requests_keep_being_answered_while_versions_are_swapped(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path,
    ) -> None:
        volume = Volume(tmp_path / "config")
        volume.write(**{"roles.toml": role_map(**{"127.0.0.2": "role-x"})})
        running = await imds_factory(role_map=volume.path("roles.toml"),
                                     reload_interval="0.05", connection_close="false")
        http = caller("127.0.0.2")
        tok = await token(http, running.url)
        answers: list[tuple[int, str]] = []
        stop = asyncio.Event()

        async def ask() -> None:
            while not stop.is_set():
                answers.append(await listing(http, running.url, tok))

        askers = [asyncio.create_task(ask()) for _ in range(4)]
        for n in range(10):
            volume.write(**{"roles.toml": role_map(**{"127.0.0.2": ("role-y", "role-x")[n % 2]})})
            await until(lambda n=n: reloads(running, "role_map", OK) == n + 1, 5, "a reload")
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*askers)
        assert len(answers) > 50
        assert {200} == {status for status, _ in answers}
        assert {"role-x", "role-y"} == {role for _, role in answers}


    async def test_reloads_are_counted_on_metrics_by_file_and_result(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path,
    ) -> None:
        path = tmp_path / "roles.toml"
        path.write_text(role_map(**{"127.0.0.2": "role-b"}))
        running = await imds_factory(role_map=str(path), reload_interval="0")
        assert running.watch is not None
        for text in ("[clients\n", role_map(**{"127.0.0.2": "role-c"})):
            path.write_text(text)
            await running.watch.check()
        path.unlink()
        await running.watch.check()
        status, text = await ControlAPI(http, running).call("GET", "/metrics")
        assert 200 == status
        counted = {tuple(sorted(sample.labels.items())): sample.value
                   for family in text_string_to_metric_families(text)
                   for sample in family.samples if sample.name == "imds_config_reloads_total"}
        assert {(("file", "role_map"), ("result", result)): 1.0
                for result in (OK, INVALID, MISSING)} == counted


class TestPrimingNewRoles:
    async def test_the_old_map_serves_while_a_new_role_is_primed_and_after_sts_fails(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path, sts: StsProxy, caplog: pytest.LogCaptureFixture,
    ) -> None:
        path = tmp_path / "roles.toml"
        # An ARN from the start: STS settings apply only to a map that names one.
        first = role_map(**{"127.0.0.2": "role-b", "127.0.0.9": ROLE_ARN.replace("new", "a")})
        path.write_text(first)
        running = await imds_factory(role_map=str(path), reload_interval="0",
                                     sts_endpoint_url=sts.url)
        assert running.watch is not None
        http = caller("127.0.0.2")

        # STS holds the new role's AssumeRole: the swap waits, requests do not.
        sts.hang("AssumeRole")
        path.write_text(first.replace('"role-b"', f'"{ROLE_ARN}"'))
        check = asyncio.create_task(running.watch.check())
        await until(lambda: sts.held() >= 1, 10, "the new role's AssumeRole")
        assert "role-b" == await role_of(http, running.url)
        sts.heal()
        await asyncio.wait_for(check, 30)
        assert "new" == await role_of(http, running.url)

        # STS refuses the next new role: the map in force stays, logged and counted.
        sts.fail("AssumeRole", 403, "AccessDenied", "not authorized to perform sts:AssumeRole")
        path.write_text(first.replace('"role-b"', f'"{ROLE_ARN.replace("new", "refused")}"'))
        with caplog.at_level(logging.WARNING, logger="imds.reload"):
            await running.watch.check()
        assert "new" == await role_of(http, running.url)
        assert 1 == reloads(running, "role_map", UNAVAILABLE)
        assert any("first credentials" in r.getMessage() for r in caplog.records)


def pod_token(running: Running, namespace: str, service_account: str) -> str:
    key = load_or_create_key(running.config.state_dir)
    return mint(key, namespace=namespace, service_account=service_account, pod_name="p-0")


async def pod_key(http: aiohttp.ClientSession, running: Running, tok: str) -> tuple[int, str]:
    async with http.get(running.url + "/v1/credentials", headers={"Authorization": tok}) as r:
        body = await r.text()
        return r.status, json.loads(body)["AccessKeyId"] if r.status == 200 else body


class TestAssociationsReload:
    def test_the_file_and_the_option_together_are_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "associations"
        path.write_text("shop/web=web-role\n")
        with pytest.raises(ConfigError, match="give one"):
            load({"pod_identity_associations": str(path),
                  "pod_identity_association": ["a/b=c"]}, {})

    def test_a_bad_line_fails_at_load_naming_its_line(self, tmp_path: Path) -> None:
        path = tmp_path / "associations"
        path.write_text("# comment\n\nshop/web=web-role\nshop/Web=x\n")
        with pytest.raises(ConfigError, match="line 4"):
            load({"pod_identity_associations": str(path)}, {})

    async def test_a_configmap_update_changes_a_service_accounts_role(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path,
    ) -> None:
        volume = Volume(tmp_path / "config")
        volume.write(associations="# pods\nshop/web = web-role\n")
        running = await imds_factory(pod_identity_associations=volume.path("associations"),
                                     reload_interval="0.1")
        web = pod_token(running, "shop", "web")
        worker = pod_token(running, "shop", "worker")
        assert (200, key_of(running, "web-role")) == await pod_key(http, running, web)
        assert 404 == (await pod_key(http, running, worker))[0]

        volume.write(associations="shop/web=other-role\nshop/worker=web-role\n")
        await until(lambda: reloads(running, "pod_identity_associations", OK) == 1, 5,
                    "the reload")
        assert (200, key_of(running, "other-role")) == await pod_key(http, running, web)
        assert (200, key_of(running, "web-role")) == await pod_key(http, running, worker)

    async def test_a_broken_or_removed_file_keeps_the_associations_in_force(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path,
    ) -> None:
        volume = Volume(tmp_path / "config")
        volume.write(associations="shop/web=web-role\n")
        running = await imds_factory(pod_identity_associations=volume.path("associations"),
                                     reload_interval="0")
        assert running.watch is not None
        web = pod_token(running, "shop", "web")
        volume.write(associations="shop/web\n")
        await running.watch.check()
        assert (200, key_of(running, "web-role")) == await pod_key(http, running, web)
        volume.write(other="")
        await running.watch.check()
        assert (200, key_of(running, "web-role")) == await pod_key(http, running, web)
        assert (1, 1, 0) == tuple(reloads(running, "pod_identity_associations", result)
                                  for result in (INVALID, MISSING, OK))

    async def test_an_answer_kept_by_the_fast_path_is_not_sent_after_the_swap(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path,
    ) -> None:
        path = tmp_path / "associations"
        path.write_text("shop/web=web-role\n")
        running = await imds_factory(pod_identity_associations=str(path), reload_interval="0")
        assert running.watch is not None and running.lab is not None
        web = pod_token(running, "shop", "web")
        # Kept answers live within one second: the rest of the test fits in it.
        await just_after_a_second_turns()
        assert (200, key_of(running, "web-role")) == await pod_key(http, running, web)
        assert (200, key_of(running, "web-role")) == await pod_key(http, running, web)
        assert running.lab.fast_kept >= 1
        path.write_text("shop/web=other-role\n")
        await running.watch.check()
        assert (200, key_of(running, "other-role")) == await pod_key(http, running, web)
