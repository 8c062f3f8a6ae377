"""The pytest plugin, as a user's test suite sees it: run through `pytester`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.processes import ROOT

pytest_plugins = ["pytester"]

EXAMPLE = ROOT / "examples" / "test_app_rotation.py"
# Inner runs skip what they do not need: hypothesis's plugin alone takes seconds to set up.
QUIET = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")


@pytest.fixture(autouse=True)
def quiet_inner_runs(pytester: pytest.Pytester) -> None:
    # The inner runs load pytest-asyncio too; give it the setting it warns about.
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


@pytest.fixture
def developer_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's machine: keys in the environment and a profile in ~/.aws/credentials."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADEVELOPERKEY0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "developer-secret")
    monkeypatch.setenv("AWS_PROFILE", "dev")
    credentials = tmp_path / "credentials"
    credentials.write_text("[dev]\naws_access_key_id = AKIADEVPROFILEKEY000\n"
                           "aws_secret_access_key = x\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))


class TestFixture:
    def test_the_entry_point_provides_the_fixtures(self, pytester: pytest.Pytester) -> None:
        result = pytester.runpytest("--fixtures", *QUIET)
        result.stdout.fnmatch_lines(["imds_server_factory -- *", "imds_server -- *"])

    @pytest.mark.usefixtures("developer_credentials")
    def test_the_default_chain_ends_at_the_fixture_server(
        self, pytester: pytest.Pytester
    ) -> None:
        """Keys and profiles the developer has set do not get in the way."""
        pytester.makepyfile(
            """
            import os
            import boto3

            def test_chain(imds_server):
                assert "AWS_ACCESS_KEY_ID" not in os.environ
                assert imds_server.url == os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
                creds = boto3.Session().get_credentials()
                assert "iam-role" == creds.method
                assert imds_server.credentials.access_key_id == creds.access_key

            def test_rotate_returns_what_a_new_session_gets(imds_server):
                old = imds_server.credentials.access_key_id
                new = imds_server.rotate()
                assert new.access_key_id != old
                assert new.access_key_id == boto3.Session().get_credentials().access_key
                # The one credential fetch of the run, recorded against its client.
                [fetch] = imds_server.fetches()
                assert (new.access_key_id[-4:], "127.0.0.1") == (fetch["key"][-4:],
                                                                 fetch["client"])
            """
        )
        result = pytester.runpytest(*QUIET)
        result.assert_outcomes(passed=2)
        # Restored for the rest of the run (here: the developer's own again).
        assert "AKIADEVELOPERKEY0000" == os.environ["AWS_ACCESS_KEY_ID"]
        assert "AWS_EC2_METADATA_SERVICE_ENDPOINT" not in os.environ

    def test_faults_expire_and_settings_through_the_fixture(
        self, pytester: pytest.Pytester
    ) -> None:
        pytester.makepyfile(
            """
            import json, time, urllib.request
            import pytest

            def get(server, path, headers=None):
                req = urllib.request.Request(server.url + path, headers=headers or {})
                try:
                    with urllib.request.urlopen(req, timeout=5) as r:
                        return r.status, r.read()
                except urllib.error.HTTPError as e:
                    return e.code, b""

            def test_status_fault_as_a_context_manager(imds_server_factory):
                server = imds_server_factory(http_tokens="optional")
                with server.fault("status", status=429, paths=["/latest/meta-data/"]) as f:
                    assert 429 == get(server, "/latest/meta-data/ami-id")[0]
                    assert f.active and 1 == f.hits
                assert not f.active
                assert 200 == get(server, "/latest/meta-data/ami-id")[0]

            def test_expire_then_rotate(imds_server_factory):
                server = imds_server_factory(http_tokens="optional")
                path = "/latest/meta-data/iam/security-credentials/" + server.role_name
                handle = server.expire()
                doc = json.loads(get(server, path)[1])
                # Already past when served [L-04]. Stamps have whole seconds, so compare
                # with the second of the fetch, not LastUpdated: the fault may begin a
                # second after the keys were issued.
                fetched = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                assert doc["Expiration"] <= fetched
                server.rotate()
                assert not handle.active
                assert json.loads(get(server, path)[1])["Expiration"] > fetched

            def test_settings(imds_server):
                role = imds_server.settings(lifetime=60, refresh_ahead=10)
                assert (60, 10) == (role["lifetime"], role["refresh_ahead"])
                assert 60 == imds_server.rotate().lifetime

            def test_a_bad_fault_is_a_clear_error(imds_server):
                with pytest.raises(ValueError, match="kind"):
                    imds_server.fault("meteor")
            """
        )
        pytester.runpytest(*QUIET).assert_outcomes(passed=4)

    def test_the_plugin_can_be_switched_off(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile("def test_x(imds_server):\n    pass\n")
        result = pytester.runpytest("-p", "no:imds", *QUIET)
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*fixture 'imds_server' not found*"])


class TestWorkedExample:
    def test_the_documented_example_passes(self, pytester: pytest.Pytester) -> None:
        """docs/pytest-plugin.md points at this file; it must keep working."""
        pytester.makepyfile(test_app_rotation=EXAMPLE.read_text())
        pytester.runpytest(*QUIET).assert_outcomes(passed=5)
