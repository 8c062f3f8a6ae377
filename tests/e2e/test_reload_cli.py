"""
`imds serve --role-map FILE` as a user runs it, the file in a directory laid out as a
ConfigMap volume and updated as kubelet does it (tests/http/test_reload.py has the rest):
botocore's own IMDS fetcher, in a separate process with no AWS configuration,
sees the new role; a broken version leaves the old one, with one warning on stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.configmap import Volume, role_map
from tests.support.processes import clean_env, run, run_imds

pytestmark = pytest.mark.e2e

# The endpoint given outright: InstanceMetadataFetcher alone does not read the variable,
# and nothing may go to 169.254.169.254 from the host.
FETCH = ("import os; from botocore.utils import InstanceMetadataFetcher; "
         "print(InstanceMetadataFetcher(timeout=2, num_attempts=2, "
         "base_url=os.environ['AWS_EC2_METADATA_SERVICE_ENDPOINT'])"
         ".retrieve_iam_role_credentials()['role_name'])")


def eventually(read: Callable[[], str], wanted: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    seen = read()
    while seen != wanted:
        assert time.monotonic() < deadline, f"still {seen!r}, waiting for {wanted!r}"
        time.sleep(0.2)
        seen = read()


def test_botocore_gets_the_new_role_after_a_configmap_update_and_keeps_it_after_a_broken_one(
    tmp_path: Path,
) -> None:
    volume = Volume(tmp_path / "config")
    volume.write(**{"roles.toml": role_map(**{"127.0.0.1": "role-a"})})
    args = ("--role-map", volume.path("roles.toml"), "--reload-interval", "0.2",
            "--state-dir", str(tmp_path / "state"))
    with run_imds(*args, env=clean_env(tmp_path / "home")) as server:
        client_env = clean_env(tmp_path / "client",
                               AWS_EC2_METADATA_SERVICE_ENDPOINT=server.url)

        def role() -> str:
            done = run(["python", "-c", FETCH], client_env)
            assert 0 == done.returncode, done.stderr
            return done.stdout.strip()

        assert "role-a" == role()
        volume.write(**{"roles.toml": role_map(**{"127.0.0.1": "role-b"})})
        eventually(role, "role-b")
        volume.write(**{"roles.toml": '[clients]\n"127.0.0.1" = "not a role!"\n'})
        deadline = time.monotonic() + 15
        while not any("version in force stays" in line for line in server.stderr):
            assert time.monotonic() < deadline, server.stderr
            time.sleep(0.1)
        assert "role-b" == role()
        assert server.process.poll() is None
    warnings = [line for line in server.stderr if "version in force stays" in line]
    assert 1 == len(warnings)
    assert "WARNING imds.reload: role_map " in warnings[0] and "not a role!" in warnings[0]
    assert 1 == sum("reloaded: 1 entries, roles role-b" in line for line in server.stderr)
