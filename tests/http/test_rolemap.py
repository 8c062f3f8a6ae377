"""Per-caller roles (`--role-map`): the file, the lookup, and callers on real sockets.

Loopback has a whole /8, so two "containers" are two source addresses on it: 127.0.0.1 and
127.0.0.2 (aiohttp's `local_addr`). The namespace tests repeat this across real links.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from imds.cli import main
from imds.config import load, rolemap
from imds.ec2.tree import lookup
from imds.errors import ConfigError
from imds.http import rolemap as routing
from imds.http.app import STATE
from imds.server import Running
from tests.conftest import ServerFactory
from tests.support.sts_support import BASE_KEY_ID, BASE_SECRET

TOKEN = "X-aws-ec2-metadata-token"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
LISTING = "/latest/meta-data/iam/security-credentials/"


def write_map(tmp_path: Path, text: str) -> str:
    path = tmp_path / "roles.toml"
    path.write_text(text)
    return str(path)


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
    async with http.put(url + "/latest/api/token", headers={TTL: "60"}) as r:
        assert 200 == r.status
        return await r.text()


async def get(http: aiohttp.ClientSession, url: str, path: str, tok: str) -> tuple[int, str]:
    async with http.get(url + path, headers={TOKEN: tok}) as r:
        return r.status, await r.text()


async def role_and_key(http: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    tok = await token(http, url)
    status, role = await get(http, url, LISTING, tok)
    assert 200 == status
    status, document = await get(http, url, LISTING + role, tok)
    assert 200 == status
    return role, document.split('"AccessKeyId" : "')[1].split('"')[0]


class TestFile:
    def test_entries_are_ordered_most_specific_first(self) -> None:
        parsed = rolemap.parse({"clients": {"10.0.0.0/8": "wide", "10.1.2.3": "narrow",
                                            "10.1.0.0/16": "middle"}}, "test")
        assert ["narrow", "middle", "wide"] == [role for _, role in parsed.clients]
        assert "narrow" == parsed.role_for("10.1.2.3")
        assert "middle" == parsed.role_for("10.1.9.9")
        assert "wide" == parsed.role_for("10.200.0.1")
        assert None is parsed.role_for("192.0.2.1")

    def test_an_ipv4_mapped_caller_matches_its_ipv4_entry(self) -> None:
        """A dual-stack listener reports IPv4 callers as ::ffff:a.b.c.d."""
        parsed = rolemap.parse({"clients": {"10.1.2.3": "app"}}, "test")
        assert "app" == parsed.role_for("::ffff:10.1.2.3")

    def test_role_names_and_arns_are_accepted(self) -> None:
        arn = "arn:aws:iam::111122223333:role/team/app"
        parsed = rolemap.parse({"clients": {"10.0.0.1": "app", "10.0.0.2": arn}}, "test")
        assert ["app", arn] == parsed.roles()

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            ({"clients": {"10.0.0.300": "app"}}, "address or CIDR"),
            ({"clients": {"10.0.0.1": "app", "10.0.0.1/32": "other"}}, "already mapped"),
            ({"clients": {"10.0.0.1": "bad role!"}}, "neither an IAM role name"),
            ({"clients": {"10.0.0.1": "arn:aws:iam::1:role/x"}}, "neither an IAM role name"),
            ({"clients": {"10.0.0.1": 7}}, "role name or role ARN"),
            ({"unmapped": "deny"}, "unmapped must be"),
            ({"roles": {}}, "unknown key"),
            ({"clients": "10.0.0.1"}, "must be a table"),
        ],
    )
    def test_mistakes_are_config_errors_naming_the_entry(
        self, content: dict[str, object], message: str
    ) -> None:
        with pytest.raises(ConfigError, match=message):
            rolemap.parse(content, "role map 'x.toml'")

    def test_a_bad_map_fails_at_config_load_and_the_cli_exits_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = write_map(tmp_path, '[clients]\n"not-an-address" = "app"\n')
        with pytest.raises(ConfigError, match="not-an-address"):
            load({"role_map": path}, {})
        assert 2 == main(["serve", "--role-map", path], environ={})
        assert "not-an-address" in capsys.readouterr().err

    def test_a_missing_or_invalid_toml_file_is_a_config_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="does not exist"):
            rolemap.read(str(tmp_path / "nope.toml"))
        with pytest.raises(ConfigError, match="not valid TOML"):
            rolemap.read(write_map(tmp_path, "[clients\n"))

    def test_a_role_arn_becomes_a_one_link_sts_chain(self) -> None:
        config = load({"role_arn": "arn:aws:iam::111122223333:role/base"}, {})
        arn = "arn:aws:iam::444455556666:role/app"
        assert (arn,) == routing.config_for_role(config, arn).role_arn
        named = routing.config_for_role(config, "app")
        assert ("app", ()) == (named.role_name, named.role_arn)


class TestWithoutIam:
    async def test_every_version_loses_iam_and_keeps_the_rest(
        self, imds_factory: ServerFactory
    ) -> None:
        server = await imds_factory()
        tree = server.runner.app[STATE].rules.tree
        stripped = routing.without_iam(tree)
        for version in ("latest", "2009-04-04"):
            listing = lookup(stripped, [version, "meta-data"])
            assert listing is not None and b"iam/" not in listing.body
            assert lookup(stripped, [version, "meta-data", "iam", "info"]) is None
            assert lookup(stripped, [version, "meta-data", "instance-id"]) is not None
        # The original is untouched.
        assert lookup(tree, ["latest", "meta-data", "iam", "info"]) is not None


class TestServing:
    async def test_two_callers_get_their_own_roles_and_keys(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path,
    ) -> None:
        path = write_map(tmp_path, '[clients]\n"127.0.0.2" = "role-b"\n')
        server = await imds_factory(role_name="role-a", role_map=path)
        role_a, key_a = await role_and_key(caller("127.0.0.1"), server.url)
        role_b, key_b = await role_and_key(caller("127.0.0.2"), server.url)
        assert ("role-a", "role-b") == (role_a, role_b)
        assert key_a != key_b
        assert server.routes is not None
        assert {"role-a", "role-b"} == set(server.routes.rotators)

    async def test_a_token_from_one_caller_is_401_from_the_other(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path,
    ) -> None:
        path = write_map(tmp_path, '[clients]\n"127.0.0.2" = "role-b"\n')
        server = await imds_factory(role_map=path)
        a, b = caller("127.0.0.1"), caller("127.0.0.2")
        tok = await token(a, server.url)
        assert 200 == (await get(a, server.url, LISTING, tok))[0]
        assert 401 == (await get(b, server.url, LISTING, tok))[0]

    async def test_unmapped_callers_get_the_servers_own_role_by_default(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path,
    ) -> None:
        path = write_map(tmp_path, '[clients]\n"127.0.0.2" = "role-b"\n')
        server = await imds_factory(role_name="own-role", role_map=path)
        assert "own-role" == (await role_and_key(caller("127.0.0.3"), server.url))[0]

    async def test_no_role_for_unmapped_callers_is_ec2s_instance_without_a_profile(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path,
    ) -> None:
        """[C-05] iam/ is absent from the listing and 404 below it; the rest is served."""
        path = write_map(tmp_path, 'unmapped = "no-role"\n[clients]\n"127.0.0.2" = "b"\n')
        server = await imds_factory(role_map=path)
        http = caller("127.0.0.3")
        tok = await token(http, server.url)
        assert 404 == (await get(http, server.url, LISTING, tok))[0]
        assert 404 == (await get(http, server.url, "/latest/meta-data/iam/info", tok))[0]
        status, listing = await get(http, server.url, "/latest/meta-data/", tok)
        assert 200 == status and "iam/" not in listing and "instance-id" in listing
        assert "b" == (await role_and_key(caller("127.0.0.2"), server.url))[0]

    async def test_a_role_named_twice_shares_one_rotator(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path,
    ) -> None:
        path = write_map(tmp_path, '[clients]\n"127.0.0.2" = "shared"\n'
                                   '"127.0.0.3" = "shared"\n"127.0.0.4" = "imds-local-role"\n')
        server = await imds_factory(role_map=path)
        assert server.routes is not None
        assert ["imds-local-role", "shared"] == sorted(server.routes.rotators)
        assert server.routes.rotators["imds-local-role"] is server.rotator
        _, key2 = await role_and_key(caller("127.0.0.2"), server.url)
        _, key3 = await role_and_key(caller("127.0.0.3"), server.url)
        assert key2 == key3

    async def test_every_role_rotates_in_the_background(
        self, imds_factory: ServerFactory, tmp_path: Path
    ) -> None:
        path = write_map(tmp_path, '[clients]\n"127.0.0.2" = "b"\n"127.0.0.3" = "c"\n')
        server: Running = await imds_factory(role_map=path, credential_lifetime=2,
                                             refresh_ahead=1)
        assert server.routes is not None
        rotators = list(server.routes.rotators.values())
        before = [r.fetches for r in rotators]
        await asyncio.sleep(2.5)
        assert all(r.fetches > b for r, b in zip(rotators, before, strict=True))


class TestRoleArnEntries:
    async def test_an_arn_entry_serves_that_roles_assumed_keys_from_sts(
        self, imds_factory: ServerFactory, caller: Callable[[str], aiohttp.ClientSession],
        tmp_path: Path, moto_url: str, monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A role ARN goes through the STS-backed source (moto here); names stay local."""
        import boto3

        monkeypatch.setenv("AWS_ACCESS_KEY_ID", BASE_KEY_ID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", BASE_SECRET)
        arn = "arn:aws:iam::111122223333:role/team/app"
        path = write_map(tmp_path, f'[clients]\n"127.0.0.2" = "{arn}"\n')
        server = await imds_factory(role_map=path, sts_endpoint_url=moto_url)
        http = caller("127.0.0.2")
        tok = await token(http, server.url)
        status, role = await get(http, server.url, LISTING, tok)
        assert (200, "app") == (status, role)
        status, document = await get(http, server.url, LISTING + role, tok)
        keys = json.loads(document)

        def whoami() -> str:
            client = boto3.session.Session().client(
                "sts", region_name="us-east-1", endpoint_url=moto_url,
                aws_access_key_id=keys["AccessKeyId"],
                aws_secret_access_key=keys["SecretAccessKey"],
                aws_session_token=keys["Token"])
            return client.get_caller_identity()["Arn"]

        identity = await asyncio.to_thread(whoami)
        assert identity.startswith("arn:aws:sts::111122223333:assumed-role/app/")
        # The unmapped caller still gets the locally minted default role.
        assert "imds-local-role" == (await role_and_key(caller("127.0.0.1"), server.url))[0]
