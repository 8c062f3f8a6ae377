"""A project that uses the pytest plugin, with no configuration of its own, gets a quiet run."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# Inner runs skip what they do not need: hypothesis's plugin alone takes seconds to set up.
QUIET = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")


@pytest.mark.e2e
class TestNoConfigurationNeeded:
    def test_no_asyncio_loop_scope_warning_without_a_config_file(
        self, pytester: pytest.Pytester
    ) -> None:
        """pytest-asyncio (installed beside imds) would warn that its loop scope is unset."""
        pytest.importorskip("pytest_asyncio")
        pytester.makepyfile(
            """
            def test_served(imds_server):
                assert imds_server.credentials.access_key_id
            """
        )
        result = pytester.runpytest_subprocess(*QUIET)
        result.assert_outcomes(passed=1)
        output = "\n".join(result.outlines + result.errlines)
        # pytest-asyncio ran, with the option unset: the case it warns about.
        assert "asyncio_default_fixture_loop_scope=None" in output
        assert "is unset" not in output
        assert "PytestDeprecationWarning" not in output
