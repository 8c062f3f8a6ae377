"""
The signed instance identity document [D-*]: the real `openssl` verifies what imds serves
against the certificate `imds identity-cert` prints, exactly as the AWS documentation
shows, and the key behind it survives restarts.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from imds.cli import EXIT_STARTUP, main
from imds.instance.identity import CERT_FILE, KEY_FILE, load_or_create
from imds.server import Running
from tests.conftest import ServerFactory
from tests.support.metadata_client import MetadataClient
from tests.support.processes import ROOT, clean_env

IDENTITY = "/latest/dynamic/instance-identity/"

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None,
                                   reason="openssl not installed (scripts/system-deps)")


def openssl(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, timeout=30,
                          check=False)


def armour(body: bytes) -> bytes:
    """What the AWS documentation does: add the PEM lines (and the missing final newline)."""
    return b"-----BEGIN PKCS7-----\n" + body + b"\n-----END PKCS7-----\n"


def printed_certificate(capsys: pytest.CaptureFixture[str], state_dir: Path) -> bytes:
    assert 0 == main(["identity-cert", "--state-dir", str(state_dir)], environ={})
    return capsys.readouterr().out.encode("ascii")


@pytest.fixture
async def served(
    imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> tuple[Running, MetadataClient, Path]:
    state = tmp_path / "state"
    server = await imds_factory(state_dir=state, region="eu-central-1",
                                account_id="210987654321")
    return server, MetadataClient(http, server.url), state


class TestStateDirectory:
    def test_key_is_owner_only_and_reused(self, tmp_path: Path) -> None:
        first = load_or_create(tmp_path / "state")
        key = tmp_path / "state" / KEY_FILE
        assert 0o600 == stat.S_IMODE(key.stat().st_mode)
        assert 0o700 == stat.S_IMODE((tmp_path / "state").stat().st_mode)
        second = load_or_create(tmp_path / "state")
        assert first.certificate_pem == second.certificate_pem
        assert first.key.private_numbers() == second.key.private_numbers()

    def test_lost_certificate_is_reissued_for_the_same_key(self, tmp_path: Path) -> None:
        first = load_or_create(tmp_path)
        (tmp_path / CERT_FILE).unlink()
        second = load_or_create(tmp_path)
        assert first.key.public_key() == second.certificate.public_key()
        assert (tmp_path / CERT_FILE).read_bytes() == second.certificate_pem

    def test_a_garbage_key_file_stops_startup_with_a_clear_message(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / KEY_FILE).write_text("not a key")
        assert EXIT_STARTUP == main(["identity-cert", "--state-dir", str(tmp_path)],
                                    environ={})
        assert "is not a PEM private key" in capsys.readouterr().err

    def test_certificate_names_imds_not_aws(self, tmp_path: Path) -> None:
        certificate = load_or_create(tmp_path).certificate
        assert "imds" in certificate.subject.rfc4514_string()
        assert "Amazon" not in certificate.subject.rfc4514_string()


class TestIdentityCertCommand:
    def test_prints_the_pem_it_also_wrote_to_the_state_dir(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        printed = printed_certificate(capsys, tmp_path)
        assert printed == (tmp_path / CERT_FILE).read_bytes()
        assert printed.startswith(b"-----BEGIN CERTIFICATE-----\n")
        x509.load_pem_x509_certificate(printed)

    def test_as_a_separate_process_with_the_state_dir_from_the_environment(
        self, tmp_path: Path
    ) -> None:
        env = clean_env(tmp_path / "home", IMDS_STATE_DIR=str(tmp_path / "state"))
        result = subprocess.run([sys.executable, "-m", "imds", "identity-cert"], env=env,
                                capture_output=True, cwd=ROOT, timeout=60, check=False)
        assert 0 == result.returncode, result.stderr
        assert result.stdout == (tmp_path / "state" / CERT_FILE).read_bytes()


@needs_openssl
class TestOpensslVerifies:
    @pytest.mark.parametrize("name", ["pkcs7", "rsa2048"])
    async def test_pkcs7_bodies_verify_and_carry_the_document(
        self, served: tuple[Running, MetadataClient, Path], tmp_path: Path, name: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """[D-07] [D-08] `openssl smime -verify -inform PEM -certfile <cert> -noverify`."""
        _, client, state = served
        (tmp_path / "cert.pem").write_bytes(printed_certificate(capsys, state))
        (tmp_path / name).write_bytes(armour(await client.body(IDENTITY + name)))
        result = openssl("smime", "-verify", "-in", tmp_path / name, "-inform", "PEM",
                         "-certfile", tmp_path / "cert.pem", "-noverify")
        assert 0 == result.returncode, result.stderr
        assert b"Verification successful" in result.stderr
        assert await client.body(IDENTITY + "document") == result.stdout

    @pytest.mark.parametrize("name", ["pkcs7", "rsa2048"])
    async def test_pkcs7_with_one_byte_of_the_document_changed_fails(
        self, served: tuple[Running, MetadataClient, Path], tmp_path: Path, name: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        _, client, state = served
        (tmp_path / "cert.pem").write_bytes(printed_certificate(capsys, state))
        der = bytearray(base64.b64decode(await client.body(IDENTITY + name)))
        document = await client.body(IDENTITY + "document")
        at = bytes(der).index(b'"region" : "eu-central-1"') + len(b'"region" : "eu-')
        der[at] = ord("w")  # eu-central-1 -> eu-wentral-1, inside the signed content
        (tmp_path / name).write_bytes(armour(base64.encodebytes(bytes(der)).rstrip()))
        result = openssl("smime", "-verify", "-in", tmp_path / name, "-inform", "PEM",
                         "-certfile", tmp_path / "cert.pem", "-noverify")
        assert 0 != result.returncode
        assert b"Verification successful" not in result.stderr
        assert document != result.stdout

    async def test_signature_verifies_with_the_certificate_public_key(
        self, served: tuple[Running, MetadataClient, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """[D-06] `openssl dgst -sha256 -verify <pubkey> -signature <sig> document`."""
        _, client, state = served
        paths = self._signature_files(tmp_path, printed_certificate(capsys, state))
        paths["document"].write_bytes(await client.body(IDENTITY + "document"))
        paths["signature"].write_bytes(
            base64.b64decode(await client.body(IDENTITY + "signature")))
        result = openssl("dgst", "-sha256", "-verify", paths["pubkey"], "-signature",
                         paths["signature"], paths["document"])
        assert (0, b"Verified OK\n") == (result.returncode, result.stdout)

    async def test_signature_fails_for_a_document_altered_by_one_byte(
        self, served: tuple[Running, MetadataClient, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        _, client, state = served
        paths = self._signature_files(tmp_path, printed_certificate(capsys, state))
        document = bytearray(await client.body(IDENTITY + "document"))
        document[-2] ^= 0x01  # the last newline (before `}`) becomes a vertical tab
        paths["document"].write_bytes(bytes(document))
        paths["signature"].write_bytes(
            base64.b64decode(await client.body(IDENTITY + "signature")))
        result = openssl("dgst", "-sha256", "-verify", paths["pubkey"], "-signature",
                         paths["signature"], paths["document"])
        assert 0 != result.returncode
        assert b"Verification failure" in result.stdout + result.stderr

    @staticmethod
    def _signature_files(tmp_path: Path, certificate: bytes) -> dict[str, Path]:
        (tmp_path / "cert.pem").write_bytes(certificate)
        result = openssl("x509", "-pubkey", "-noout", "-in", tmp_path / "cert.pem")
        assert 0 == result.returncode, result.stderr
        (tmp_path / "pubkey.pem").write_bytes(result.stdout)
        return {"pubkey": tmp_path / "pubkey.pem", "document": tmp_path / "document",
                "signature": tmp_path / "signature.bin"}


class TestServedBodies:
    @pytest.mark.parametrize("name", ["signature", "pkcs7", "rsa2048"])
    async def test_base64_in_76_columns_without_armour_or_final_newline(
        self, served: tuple[Running, MetadataClient, Path], name: str
    ) -> None:
        """[D-07] [D-09] clients add the PEM lines themselves."""
        _, client, _ = served
        reply = await client.get(IDENTITY + name)
        assert (200, "text/plain") == (reply.status, reply.content_type)
        lines = reply.body.split(b"\n")
        assert len(lines) > 1
        assert all(76 == len(line) for line in lines[:-1])
        assert 0 < len(lines[-1]) <= 76
        assert not reply.body.endswith(b"\n")
        assert b"-----" not in reply.body
        base64.b64decode(reply.body, validate=False)

    async def test_pkcs7_is_sha256_signed_data_without_certificates(
        self, served: tuple[Running, MetadataClient, Path]
    ) -> None:
        """As on EC2, the certificate comes from `-certfile`, not from the signature."""
        _, client, _ = served
        der = base64.b64decode(await client.body(IDENTITY + "pkcs7"))
        with pytest.raises(ValueError, match="no certificate data"):
            pkcs7.load_der_pkcs7_certificates(der)
        # id-sha256 (2.16.840.1.101.3.4.2.1) as the digest algorithm.
        assert bytes.fromhex("0609608648016503040201") in der

    async def test_listing_names_the_four_bodies(
        self, served: tuple[Running, MetadataClient, Path]
    ) -> None:
        """[D-02] `dsa2048` is undocumented [Q-06] and not served."""
        _, client, _ = served
        assert ["document", "pkcs7", "rsa2048", "signature"] == \
            await client.listing(IDENTITY)
        assert 404 == (await client.get(IDENTITY + "dsa2048")).status


class TestDocument:
    async def test_exact_fields_in_aws_layout(
        self, served: tuple[Running, MetadataClient, Path]
    ) -> None:
        """[D-03] [D-04] alphabetical, two-space indent, `"key" : value`, no final newline."""
        server, client, _ = served
        body = await client.text(IDENTITY + "document")
        document = json.loads(body)
        assert ["accountId", "architecture", "availabilityZone", "billingProducts",
                "devpayProductCodes", "imageId", "instanceId", "instanceType", "kernelId",
                "marketplaceProductCodes", "pendingTime", "privateIp", "ramdiskId",
                "region", "version"] == list(document)
        assert body.startswith('{\n  "accountId" : "210987654321",\n')
        assert body.endswith('\n  "version" : "2017-09-30"\n}')
        assert '  "billingProducts" : null,' in body.split("\n")
        assert "eu-central-1" == document["region"]
        assert "eu-central-1a" == document["availabilityZone"]
        assert server.config.instance_id == document["instanceId"]
        # [D-05] Go decodes pendingTime as RFC 3339; botocore-style whole seconds.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", document["pendingTime"])

    async def test_same_document_under_dated_versions(
        self, served: tuple[Running, MetadataClient, Path]
    ) -> None:
        """[N-06] every version prefix serves the same tree."""
        _, client, _ = served
        latest = await client.body(IDENTITY + "document")
        for version in ("2009-04-04", "2021-03-23", "1.0"):
            assert latest == await client.body(
                f"/{version}/dynamic/instance-identity/document")
            assert await client.body(IDENTITY + "pkcs7") == await client.body(
                f"/{version}/dynamic/instance-identity/pkcs7")


class TestRestart:
    async def test_same_state_dir_keeps_instance_id_and_certificate(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        state = tmp_path / "state"
        first = await imds_factory(state_dir=state)
        first_id = await MetadataClient(http, first.url).text("/latest/meta-data/instance-id")
        certificate = printed_certificate(capsys, state)
        await first.stop()
        second = await imds_factory(state_dir=state)
        client = MetadataClient(http, second.url)
        assert first_id == await client.text("/latest/meta-data/instance-id")
        assert certificate == printed_certificate(capsys, state)
        assert re.fullmatch(r"i-0[0-9a-f]{16}", first_id)

    async def test_another_state_dir_is_another_instance(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path,
    ) -> None:
        one = await imds_factory(state_dir=tmp_path / "one")
        two = await imds_factory(state_dir=tmp_path / "two")
        assert await MetadataClient(http, one.url).text("/latest/meta-data/instance-id") != \
            await MetadataClient(http, two.url).text("/latest/meta-data/instance-id")
        assert (tmp_path / "one" / CERT_FILE).read_bytes() != \
            (tmp_path / "two" / CERT_FILE).read_bytes()

    async def test_configured_instance_id_wins_and_is_not_saved(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path,
    ) -> None:
        server = await imds_factory(state_dir=tmp_path, instance_id="i-0123456789abcdef0")
        client = MetadataClient(http, server.url)
        assert "i-0123456789abcdef0" == await client.text("/latest/meta-data/instance-id")
        assert "i-0123456789abcdef0" == json.loads(
            await client.text(IDENTITY + "document"))["instanceId"]
        assert not (tmp_path / "instance-id").exists()
