"""The control API: its own listener, bearer auth, and each action over a real socket."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import aiohttp
import pytest

from imds.creds.model import Credentials
from imds.creds.sources import LocalSource, RoleIdentity
from imds.errors import StartupError
from imds.lab.control import TOKEN_FILE, load_or_create_token
from imds.server import Running, start
from tests.conftest import ServerFactory, make_config
from tests.support.labutil import CREDENTIALS, ControlAPI, get, token
from tests.support.polling import until

ROLE = "imds-local-role"


@pytest.fixture
async def lab(imds_factory: ServerFactory, http: aiohttp.ClientSession) -> ControlAPI:
    return ControlAPI(http, await imds_factory())


class FixedLifetimeSource:
    """A source whose lifetime is not adjustable at runtime (like STS's session duration)."""

    def __init__(self) -> None:
        self._inner = LocalSource(ROLE, "123456789012", 3600, time.time)

    @property
    def role(self) -> RoleIdentity:
        return self._inner.role

    def describe(self) -> str:
        return "fixed-lifetime test source"

    async def fetch(self) -> Credentials:
        return await self._inner.fetch()


class TestListener:
    async def test_control_api_is_not_on_the_metadata_listener(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        assert lab.url != lab.running.url
        for path in ("/api/status", "/metrics", "/"):
            async with http.get(lab.running.url + path,
                                headers={"Authorization": f"Bearer {lab.token}"}) as r:
                # The metadata listener knows nothing of it: EC2's own answers.
                assert r.status in (401, 404)
                assert "EC2ws" == r.headers["Server"]

    async def test_control_false_starts_no_control_listener(
        self, imds_factory: ServerFactory
    ) -> None:
        running = await imds_factory(control=False)
        assert running.control is None
        assert running.lab is not None  # faults and metrics still work in-process

    async def test_a_busy_control_port_is_a_startup_error(self, lab: ControlAPI) -> None:
        port = int(lab.url.rsplit(":", 1)[1])
        with pytest.raises(StartupError, match="control API: cannot listen"):
            await start(make_config(control_port=port))

    def test_control_port_defaults_to_1339_or_a_free_one_with_port_0(self) -> None:
        assert 0 == make_config().control_port
        assert 1339 == make_config(port=1338).control_port
        assert 7000 == make_config(port=1338, control_port=7000).control_port


class TestAuth:
    async def test_without_a_token_every_endpoint_is_401(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        for method, path in (("GET", "/api/status"), ("POST", "/api/rotate"),
                             ("POST", "/api/faults"), ("GET", "/metrics"),
                             ("DELETE", "/api/faults")):
            async with http.request(method, lab.url + path) as r:
                assert 401 == r.status, path
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert 1 == len(lab.running.rotator.history)  # nothing rotated

    async def test_a_wrong_token_is_401(self, lab: ControlAPI) -> None:
        assert 401 == (await lab.call("GET", "/api/status", token=lab.token + "x"))[0]
        assert 401 == (await lab.call("GET", "/api/status", token=""))[0]

    async def test_the_page_is_served_without_a_token_and_holds_no_data(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        """The page reads its token from the URL fragment, which never reaches the server."""
        async with http.get(lab.url + "/") as r:
            page = await r.text()
            assert 200 == r.status
            assert "text/html" == r.content_type
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        current = lab.running.rotator.current
        assert current is not None
        assert lab.token not in page
        assert current.credentials.key_hint not in page
        assert "location.hash" in page


class TestActions:
    async def test_rotate_serves_new_keys_at_once(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        tok = await token(http, lab.running.url)
        before = (await lab.status())["roles"][ROLE]["current"]["key"]
        rotated = await lab.ok("POST", "/api/rotate")
        _, body = await get(http, lab.running.url, CREDENTIALS, tok)
        assert rotated["key"] != before
        assert rotated["key"][-4:] in body.decode()
        assert 2 == len((await lab.status())["roles"][ROLE]["rotations"])

    async def test_settings_change_the_next_credentials_and_the_schedule(
        self, lab: ControlAPI
    ) -> None:
        role = await lab.ok("POST", "/api/settings", {"lifetime": 120, "refresh_ahead": 30})
        current = role["current"]
        assert (120, 30) == (role["lifetime"], role["refresh_ahead"])
        # The current keys keep their hour; they are now replaced 30 s before expiry.
        assert current["expires"] - 30 == pytest.approx(role["next_rotation"], abs=1e-3)
        rotated = await lab.ok("POST", "/api/rotate")
        assert 120 == rotated["expires"] - rotated["issued"]

    async def test_lowering_refresh_ahead_wakes_the_rotator(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        """Rotator.poke(): a new schedule takes effect without waiting for the old one."""
        lab = ControlAPI(http, await imds_factory(credential_lifetime=6, refresh_ahead=0))
        rotator = lab.running.rotator
        first = rotator.current
        assert first is not None
        # Planned 5-6 s from now (issue times are whole seconds); now 2-3 s.
        await lab.ok("POST", "/api/settings", {"refresh_ahead": 3})
        await until(lambda: rotator.current is not first, 8.0, "a rotation")
        # At the new schedule, 3 s before expiry; the old one was at expiry.
        assert rotator.history[1].at < first.expires_at - 2

    @pytest.mark.parametrize("body", [{"lifetime": 0}, {"refresh_ahead": -1},
                                      {"lifetime": "60"}, {"colour": 1}])
    async def test_bad_settings_are_400(self, lab: ControlAPI, body: dict[str, object]) -> None:
        assert 400 == (await lab.call("POST", "/api/settings", body))[0]

    async def test_a_source_without_adjustable_lifetime_says_409(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        lab = ControlAPI(http, await imds_factory(source=FixedLifetimeSource()))
        status, data = await lab.call("POST", "/api/settings", {"lifetime": 60})
        assert 409 == status
        assert "fixed-lifetime test source" in data["error"]
        assert 200 == (await lab.call("POST", "/api/settings", {"refresh_ahead": 60}))[0]

    async def test_an_unknown_role_is_404(self, lab: ControlAPI) -> None:
        status, data = await lab.call("POST", "/api/rotate", {"role": "nobody"})
        assert 404 == status
        assert "nobody" in data["error"]

    async def test_a_body_that_is_not_a_json_object_is_400(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        async with http.post(lab.url + "/api/rotate", data=b"[1",
                             headers={"Authorization": f"Bearer {lab.token}",
                                      "Content-Type": "application/json"}) as r:
            assert 400 == r.status
        assert 400 == (await lab.call("POST", "/api/expire", [1]))[0]


class TestRoleMap:
    async def test_actions_and_faults_reach_a_mapped_role(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """With --role-map every role has its own rotator; `role` picks it."""
        roles = tmp_path / "roles.toml"
        roles.write_text('unmapped = "default-role"\n[clients]\n"127.0.0.1" = "mapped"\n')
        lab = ControlAPI(http, await imds_factory(role_map=str(roles)))
        status = await lab.status()
        assert {ROLE, "mapped"} == set(status["roles"])
        before = status["roles"]["mapped"]["current"]["key"]
        rotated = await lab.ok("POST", "/api/rotate", {"role": "mapped"})
        assert ("mapped", True) == (rotated["role"], rotated["key"] != before)
        # This client is mapped to "mapped": its credential document, revoked.
        await lab.ok("POST", "/api/revoke", {"role": "mapped"})
        tok = await token(http, lab.running.url)
        _, body = await get(http, lab.running.url,
                            "/latest/meta-data/iam/security-credentials/mapped", tok)
        assert b"AssumeRoleUnauthorizedAccess" in body
        assert ROLE == (await lab.status())["role"]  # the server's own stays the default
        await lab.fault(kind="source", count=1)
        status_code, data = await lab.call("POST", "/api/rotate", {"role": "mapped"})
        assert (503, True) == (status_code, "simulated source outage" in data["error"])


class TestFaultEndpoints:
    async def test_add_list_clear_one_and_clear_all(self, lab: ControlAPI) -> None:
        one = await lab.fault(kind="status")
        two = await lab.fault(kind="latency", delay=0.1)
        listed = await lab.ok("GET", "/api/faults")
        assert [one["id"], two["id"]] == [f["id"] for f in listed]
        cleared = await lab.ok("DELETE", f"/api/faults/{one['id']}")
        assert "cleared" == cleared["end_reason"]
        assert 404 == (await lab.call("DELETE", "/api/faults/f999"))[0]
        assert {"cleared": 1} == await lab.ok("DELETE", "/api/faults")
        assert [] == await lab.ok("GET", "/api/faults")


class TestStatus:
    async def test_status_shows_key_validity_next_rotation_and_fetches(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        tok = await token(http, lab.running.url)
        await get(http, lab.running.url, CREDENTIALS, tok)
        status = await lab.status()
        role = status["roles"][ROLE]
        current = lab.running.rotator.current
        assert current is not None
        hint = current.credentials.key_hint
        assert (hint, "valid") == (role["current"]["key"], role["current"]["state"])
        assert 3590 < role["current"]["seconds_left"] <= 3600
        assert current.expires_at - 300 == pytest.approx(role["next_rotation"], abs=1e-3)
        fetch = status["fetches"][-1]
        assert ("127.0.0.1", ROLE, hint, "") == (fetch["client"], fetch["role"], fetch["key"],
                                                 fetch["fault"])

    async def test_status_never_shows_a_full_key_id_or_a_secret(
        self, lab: ControlAPI, http: aiohttp.ClientSession
    ) -> None:
        tok = await token(http, lab.running.url)
        await get(http, lab.running.url, CREDENTIALS, tok)
        await lab.ok("POST", "/api/expire")
        text = str(await lab.status())
        creds = lab.running.rotator.current.credentials  # type: ignore[union-attr]
        for secret in (creds.access_key_id, creds.secret_access_key, creds.session_token):
            assert secret not in text

    async def test_the_fetch_log_is_a_bounded_ring(self, imds: Running) -> None:
        assert imds.lab is not None
        assert imds.lab.fetches.maxlen is not None and imds.lab.fetches.maxlen <= 1024


class TestTokenFile:
    def test_generated_once_with_mode_0600_and_reused(self, tmp_path: Path) -> None:
        state = tmp_path / "state"
        first = load_or_create_token(str(state))
        assert first == load_or_create_token(str(state))
        mode = stat.S_IMODE(os.stat(state / TOKEN_FILE).st_mode)
        assert 0o600 == mode
        assert len(first) >= 40

    def test_an_empty_token_file_is_a_startup_error(self, tmp_path: Path) -> None:
        (tmp_path / TOKEN_FILE).write_text("")
        with pytest.raises(StartupError, match="empty"):
            load_or_create_token(str(tmp_path))
