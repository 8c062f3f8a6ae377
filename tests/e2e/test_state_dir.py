"""
The state directory (imds.instance.statedir): servers that start at once on one directory all sign
with the certificate on disk, and a directory or file that another user owns or can write
is refused as ssh refuses one, before anything in it is used.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from imds.cli import EXIT_USAGE, main
from imds.errors import ConfigError
from imds.instance.identity import CERT_FILE, KEY_FILE, load_or_create
from imds.lab.control import TOKEN_FILE, URL_FILE, load_or_create_token, write_url
from imds.server import Running
from tests.conftest import ServerFactory
from tests.e2e.test_identity import IDENTITY, armour, needs_openssl, openssl
from tests.support.metadata_client import MetadataClient
from tests.support.processes import clean_env, run
from tests.support.rawhttp import untouched_listener

T = TypeVar("T")
Start = Callable[..., Running]

# What tests run as root use to stand for "another user".
NOBODY = 65534

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")


def key_without_certificate(state: Path) -> Path:
    """A state directory whose key exists and whose certificate does not."""
    load_or_create(state)
    (state / CERT_FILE).unlink()
    return state


def at_once(count: int, action: Callable[[], T]) -> list[T]:
    """`action` run by `count` threads released together (a barrier); results in order."""
    barrier = threading.Barrier(count)

    def one(_: int) -> T:
        barrier.wait(30)
        return action()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def verifies(rsa2048: bytes, certificate: Path, tmp_path: Path) -> bool:
    """[D-08] what the AWS documentation runs: `openssl smime -verify -certfile <cert>`."""
    signed = tmp_path / f"rsa2048-{os.urandom(4).hex()}"
    signed.write_bytes(armour(rsa2048))
    result = openssl("smime", "-verify", "-in", signed, "-inform", "PEM", "-certfile",
                     certificate, "-noverify")
    return result.returncode == 0


def refusal(capsys: pytest.CaptureFixture[str], state: Path) -> str:
    """What `imds identity-cert` says on stderr when it refuses `state`."""
    assert EXIT_USAGE == main(["identity-cert", "--state-dir", str(state)], environ={})
    captured = capsys.readouterr()
    assert "" == captured.out
    return captured.err


class TestConcurrentStarts:
    def test_loaders_racing_on_a_missing_certificate_all_use_the_one_on_disk(
        self, tmp_path: Path
    ) -> None:
        """Four loaders released at once, five times: every one signs with the file's cert."""
        state = tmp_path / "state"
        load_or_create(state)
        for _ in range(5):
            (state / CERT_FILE).unlink()
            loaded = at_once(4, lambda: load_or_create(state).certificate_pem)
            assert [(state / CERT_FILE).read_bytes()] * 4 == loaded

    @needs_openssl
    async def test_servers_started_at_once_sign_what_verifies_with_the_cert_on_disk(
        self, imds_thread: Start, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """Four servers on one directory with the key and no certificate, five times over."""
        state = key_without_certificate(tmp_path / "state")
        for _ in range(5):
            (state / CERT_FILE).unlink(missing_ok=True)
            servers = await asyncio.to_thread(at_once, 4, lambda: imds_thread(state_dir=state))
            signed = [await MetadataClient(http, server.url).body(IDENTITY + "rsa2048")
                      for server in servers]
            assert [True] * 4 == [verifies(body, state / CERT_FILE, tmp_path)
                                  for body in signed]

    @needs_openssl
    async def test_identity_cert_after_the_certificate_was_deleted_matches_a_running_server(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Issued again from the same key, the certificate is the one the server signs with."""
        state = key_without_certificate(tmp_path / "state")
        server = await imds_factory(state_dir=state)
        (state / CERT_FILE).unlink()
        assert 0 == main(["identity-cert", "--state-dir", str(state)], environ={})
        (tmp_path / "printed.pem").write_text(capsys.readouterr().out)
        rsa2048 = await MetadataClient(http, server.url).body(IDENTITY + "rsa2048")
        assert (tmp_path / "printed.pem").read_bytes() == (state / CERT_FILE).read_bytes()
        assert verifies(rsa2048, tmp_path / "printed.pem", tmp_path)


class TestUntrustedStateDirectory:
    @pytest.mark.parametrize("mode", [
        pytest.param(0o777, id="world-writable"),
        pytest.param(0o1777, id="sticky-like-tmp"),
        pytest.param(0o770, id="group-writable"),
    ])
    def test_a_directory_others_can_write_is_a_configuration_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
    ) -> None:
        """Exit 2 and one line naming --state-dir and the chmod that fixes it."""
        state = tmp_path / "state"
        state.mkdir()
        state.chmod(mode)
        err = refusal(capsys, state)
        assert 1 == len(err.splitlines())
        assert f"--state-dir '{state}'" in err
        assert f"run `chmod 700 {state}`" in err
        assert not (state / KEY_FILE).exists()

    def test_a_file_others_can_write_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        state = tmp_path / "state"
        load_or_create(state)
        (state / KEY_FILE).chmod(0o666)
        assert f"run `chmod go-w {state / KEY_FILE}`" in refusal(capsys, state)

    @as_root
    async def test_a_directory_another_user_owns_is_refused_before_anything_is_written(
        self, imds_factory: ServerFactory, tmp_path: Path
    ) -> None:
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        os.chown(state, NOBODY, NOBODY)
        with pytest.raises(ConfigError, match=f"is owned by uid {NOBODY}, not by you"):
            await imds_factory(state_dir=state)
        assert [] == list(state.iterdir())

    @as_root
    @pytest.mark.e2e
    def test_serve_refuses_a_control_token_another_user_planted(
        self, tmp_path: Path, empty_home: Path
    ) -> None:
        """Whoever owns the token file could drive the control API: exit 2, one line."""
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        planted = state / TOKEN_FILE
        planted.write_text("0" * 64)
        os.chown(planted, NOBODY, NOBODY)
        result = run([sys.executable, "-m", "imds", "serve", "--port", "0", "--state-dir",
                      str(state)], clean_env(empty_home), timeout=30)
        assert EXIT_USAGE == result.returncode, result.stderr
        assert [f"imds: configuration error: --state-dir '{state}': {planted} is owned by "
                f"uid {NOBODY}, not by you (uid 0) or root; remove it (`rm {planted}`) if "
                "you did not put it there (imds trusts only a state directory and files "
                "that you or root own and nobody else can write)"] == \
            result.stderr.splitlines()
        assert "" == result.stdout

    @as_root
    def test_ctl_sends_no_token_to_a_control_url_another_user_planted(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        with untouched_listener() as trap_url:
            planted = state / URL_FILE
            planted.write_text(f"{trap_url}\n")
            os.chown(planted, NOBODY, NOBODY)
            code = main(["ctl", "--state-dir", str(state), "status"],
                        {"IMDS_CONTROL_TOKEN": "the-real-token"})
        assert EXIT_USAGE == code
        assert "imds ctl: configuration error: --state-dir" in capsys.readouterr().err

    def test_files_imds_writes_pass_its_own_check_under_a_group_writable_umask(
        self, tmp_path: Path
    ) -> None:
        """With `umask 002` (user private groups) the next start must not refuse them."""
        state = tmp_path / "state"
        umask = os.umask(0o002)
        try:
            load_or_create(state)
            load_or_create_token(str(state))
            write_url(str(state), "http://127.0.0.1:1339")
        finally:
            os.umask(umask)
        writable = {path.name: f"{stat.S_IMODE(path.stat().st_mode):04o}"
                    for path in state.iterdir() if path.stat().st_mode & 0o022}
        assert {} == writable
        load_or_create(state)
