"""
Signing the instance identity document: one key and self-signed certificate per state
directory, created once and reused, so signatures stay verifiable across restarts.

What EC2 publishes and what we serve instead [D-06] [D-07] [D-08]:

- `signature`: base64 RSA (PKCS #1 v1.5) over the SHA-256 of the document. Same here.
- `rsa2048`: PKCS #7 SignedData with the document embedded, RSA-2048 over SHA-256. Same here.
- `pkcs7`: AWS signs it with DSA over SHA-1. `cryptography`'s `PKCS7SignatureBuilder` only
  signs with RSA or EC keys and SHA-2 digests, so ours is the closest thing standard tools
  verify the same way: the same PKCS #7 packaging, RSA over SHA-256, with the same key.
  `openssl smime -verify` accepts both; only the algorithm identifiers inside differ.
- `dsa2048` is listed on real instances but undocumented [Q-06]; we do not serve it.

As on EC2, the PKCS #7 bodies carry no certificate (`-certfile` supplies it) and every
body is base64 wrapped at 76 columns without a final newline [D-09]. AWS signs with its
regional certificates; a simulator cannot, so users verify against the certificate that
`imds identity-cert` prints (also written to `<state dir>/identity-cert.pem`). That
certificate is a function of the key, so one lost and issued again is still the one that
running servers sign with.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from imds.errors import StartupError
from imds.instance.statedir import locked, replace_file, write_once

KEY_FILE = "identity-key.pem"
CERT_FILE = "identity-cert.pem"
KEY_BITS = 2048
# Fixed, so the certificate is a function of the key (`_self_signed`). Not after: RFC 5280
# 4.1.2.5's "no well-defined expiration date", as a kept state directory never renews it.
NOT_BEFORE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)

# [D-07] EC2's pkcs7 has authenticated attributes but no certificates and no S/MIME
# capabilities; Binary keeps the document's bytes as they are (no CRLF conversion), so
# the content `openssl smime -verify` prints is the document byte for byte.
_PKCS7_OPTIONS = [
    pkcs7.PKCS7Options.Binary,
    pkcs7.PKCS7Options.NoCerts,
    pkcs7.PKCS7Options.NoCapabilities,
]


def wrap76(data: bytes) -> bytes:
    """[D-09] base64 in 76-column lines joined by `\\n`, no final newline."""
    return base64.encodebytes(data).rstrip(b"\n")


@dataclass(frozen=True, slots=True)
class SignedDocument:
    """The four `dynamic/instance-identity/` bodies, rendered once."""

    document: bytes
    signature: bytes
    pkcs7: bytes
    rsa2048: bytes


@dataclass(frozen=True, slots=True)
class IdentitySigner:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def _pkcs7(self, document: bytes) -> bytes:
        der = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(document)
            .add_signer(self.certificate, self.key, hashes.SHA256(),
                        rsa_padding=padding.PKCS1v15())
            .sign(serialization.Encoding.DER, _PKCS7_OPTIONS)
        )
        return wrap76(der)

    def sign(self, document: bytes) -> SignedDocument:
        """Sign `document` every way EC2 does; called once per document, not per request."""
        signature = self.key.sign(document, padding.PKCS1v15(), hashes.SHA256())
        # `pkcs7` would be DSA/SHA-1 on EC2; see the module docstring.
        return SignedDocument(
            document=document,
            signature=wrap76(signature),
            pkcs7=self._pkcs7(document),
            rsa2048=self._pkcs7(document),
        )


def load_or_create(state_dir: str | Path) -> IdentitySigner:
    """
    The signer of this state directory: its key and certificate, created on first use.

    Created under the state directory's lock (imds.instance.statedir), so servers starting at once
    make one key and one certificate and all sign with the ones on disk.

    Raises ConfigError when the directory is unsafe to trust (imds.instance.statedir), StartupError
    when it cannot be created or holds unusable files.
    """
    directory = Path(state_dir)
    try:
        with locked(directory):
            key = _load_or_create_key(directory / KEY_FILE)
            certificate = _load_or_create_certificate(directory / CERT_FILE, key)
    except OSError as exc:
        raise StartupError(f"state directory {str(directory)!r}: {exc.strerror or exc}") \
            from exc
    return IdentitySigner(key, certificate)


def _load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        write_once(path, pem, 0o600)
    try:
        # Our own key from our own 0700 directory: skipping the (slow, ~50 ms) consistency
        # check is what cryptography documents as safe for trusted keys.
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None,
                                                    unsafe_skip_rsa_key_validation=True)
    except ValueError as exc:
        raise StartupError(f"{path} is not a PEM private key; move it away to get a new "
                           "one") from exc
    if not isinstance(loaded, rsa.RSAPrivateKey) or loaded.key_size != KEY_BITS:
        raise StartupError(f"{path} is not an RSA-{KEY_BITS} key; move it away to get a new "
                           "one")
    return loaded


def _load_or_create_certificate(path: Path, key: rsa.RSAPrivateKey) -> x509.Certificate:
    certificate = _read_certificate(path)
    if certificate is not None and certificate.public_key() == key.public_key():
        return certificate
    # Missing, unreadable or for another key (the key file was replaced): issue anew, under
    # the state directory's lock. The certificate is public, so replacing it in place is
    # safe; and it is a function of the key alone (`_self_signed`), so a server that
    # started before the file was lost signs with exactly the certificate written here.
    certificate = _self_signed(key)
    replace_file(path, certificate.public_bytes(serialization.Encoding.PEM))
    return certificate


def _read_certificate(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    """
    The key's certificate, the same bytes every time it is issued: the serial comes from
    the key, the validity is fixed, and RSA PKCS #1 v1.5 signatures are deterministic.

    PKCS #7 names its signer by issuer and serial [D-07], so a certificate issued again
    (`imds identity-cert` after the file was deleted under a running server) must be the
    very one running servers sign with, or their `pkcs7`/`rsa2048` stop verifying.
    """
    # A recognisable name, never AWS's: nobody should mistake this for an AWS certificate.
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imds local instance metadata service"),
        x509.NameAttribute(NameOID.COMMON_NAME, "imds instance identity"),
    ])
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    # RFC 5280 4.1.2.2: positive, at most 20 octets; 159 bits of the key's SHA-256.
    serial = int.from_bytes(hashlib.sha256(public).digest()[:20], "big") >> 1 or 1
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
