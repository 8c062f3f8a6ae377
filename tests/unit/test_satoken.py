"""Kubernetes service-account tokens for EKS Pod Identity: minting, verifying, key files."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import stat
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from imds.containers.satoken import (
    AUDIENCE,
    ISSUER,
    KEY_FILE,
    LEEWAY,
    MAX_TOKEN_LENGTH,
    PodClaims,
    TokenRejected,
    Verifier,
    key_id,
    load_or_create_key,
    mint,
)
from imds.errors import ConfigError, StartupError

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a token, unverified."""
    header, payload, _ = token.split(".")
    pad = "=="
    return (json.loads(base64.urlsafe_b64decode(header + pad)),
            json.loads(base64.urlsafe_b64decode(payload + pad)))


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims at NOW for default/app in pod web-0, with `changes` (None: removed)."""
    base: dict[str, Any] = {
        "aud": [AUDIENCE], "exp": int(NOW) + 3600, "iat": int(NOW), "nbf": int(NOW),
        "iss": ISSUER, "sub": "system:serviceaccount:default:app",
        "kubernetes.io": {"namespace": "default",
                          "serviceaccount": {"name": "app", "uid": str(uuid.uuid4())},
                          "pod": {"name": "web-0", "uid": str(uuid.uuid4())}},
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def signed(payload: dict[str, Any], signer: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
           *, algorithm: str = "RS256", kid: str | None = "") -> str:
    """`payload` signed by `signer`; kid "" is the signer's own, None leaves it out."""
    headers = {} if kid is None else {"kid": kid or key_id(signer.public_key())}
    return jwt.encode(payload, signer, algorithm=algorithm, headers=headers)


def rejection(verifier: Verifier, token: str, now: float = NOW) -> str:
    """Why `verifier` refuses `token`; the reason must never quote the token."""
    with pytest.raises(TokenRejected) as caught:
        verifier.verify(token, now)
    reason = str(caught.value)
    assert not token or token not in reason
    assert all(part not in reason for part in token.split(".") if len(part) > 8)
    return reason


class TestMint:
    def test_a_minted_token_verifies_to_its_pod(self, key: rsa.RSAPrivateKey) -> None:
        uid = str(uuid.uuid4())
        token = mint(key, namespace="shop", service_account="cart", pod_name="cart-7f9c",
                     pod_uid=uid, lifetime=600, now=NOW)
        expected = PodClaims("shop", "cart", "cart-7f9c", uid, NOW + 600)
        assert expected == Verifier.of_key(key).verify(token, NOW + 10)

    def test_a_minted_token_looks_like_a_projected_one(self, key: rsa.RSAPrivateKey) -> None:
        """RS256, kid as the API server derives it, the claims kubelet's tokens carry."""
        token = mint(key, namespace="shop", service_account="cart", pod_name="cart-7f9c",
                     now=NOW)
        header, payload = segments(token)
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        assert {"alg": "RS256", "kid": b64(hashlib.sha256(der).digest())} == header
        identity = payload.pop("kubernetes.io")
        uuid.UUID(payload.pop("jti"))
        assert {"aud": ["pods.eks.amazonaws.com"], "iss": ISSUER,
                "sub": "system:serviceaccount:shop:cart", "iat": int(NOW), "nbf": int(NOW),
                "exp": int(NOW) + 86400} == payload
        assert "shop" == identity["namespace"]
        assert "cart" == identity["serviceaccount"]["name"]
        assert "cart-7f9c" == identity["pod"]["name"]
        assert 4 == uuid.UUID(identity["serviceaccount"]["uid"]).version
        assert 4 == uuid.UUID(identity["pod"]["uid"]).version

    def test_without_a_pod_name_the_token_names_no_pod(self, key: rsa.RSAPrivateKey) -> None:
        token = mint(key, namespace="default", service_account="default", now=NOW)
        assert "pod" not in segments(token)[1]["kubernetes.io"]
        assert PodClaims("default", "default", "", "", NOW + 86400) == \
            Verifier.of_key(key).verify(token, NOW)

    @pytest.mark.parametrize("settings", [
        pytest.param({"namespace": "Shop"}, id="namespace-uppercase"),
        pytest.param({"namespace": "shop.eu"}, id="namespace-dotted"),
        pytest.param({"namespace": "a" * 64}, id="namespace-64-chars"),
        pytest.param({"namespace": ""}, id="namespace-empty"),
        pytest.param({"service_account": "cart_1"}, id="sa-underscore"),
        pytest.param({"service_account": "-cart"}, id="sa-leading-dash"),
        pytest.param({"service_account": "cart\n"}, id="sa-newline"),
        pytest.param({"pod_name": "Web"}, id="pod-uppercase"),
        pytest.param({"pod_name": "web", "pod_uid": "not-a-uid"}, id="pod-uid-not-uuid"),
        pytest.param({"pod_uid": str(uuid.uuid4())}, id="pod-uid-without-name"),
        pytest.param({"lifetime": 0}, id="lifetime-zero"),
    ])
    def test_what_kubernetes_would_refuse_is_refused(
            self, key: rsa.RSAPrivateKey, settings: dict[str, Any]) -> None:
        given: dict[str, Any] = {"namespace": "shop", "service_account": "cart", **settings}
        with pytest.raises(ValueError):
            mint(key, now=NOW, **given)

    def test_service_account_names_may_be_dotted(self, key: rsa.RSAPrivateKey) -> None:
        """Service accounts are DNS-1123 subdomains, namespaces only labels."""
        token = mint(key, namespace="shop", service_account="cart.reader", now=NOW)
        assert "cart.reader" == Verifier.of_key(key).verify(token, NOW).service_account


class TestVerify:
    def test_an_es256_token_verifies(self, ec_key: ec.EllipticCurvePrivateKey) -> None:
        token = signed(claims(), ec_key, algorithm="ES256")
        assert "web-0" == Verifier.of_key(ec_key).verify(token, NOW).pod_name

    def test_a_single_audience_string_is_accepted(self, key: rsa.RSAPrivateKey) -> None:
        token = signed(claims(aud=AUDIENCE), key)
        assert "app" == Verifier.of_key(key).verify(token, NOW).service_account

    def test_a_minute_of_clock_skew_is_forgiven(self, key: rsa.RSAPrivateKey) -> None:
        """Kubernetes' leeway: just expired or not quite valid yet still passes."""
        verifier = Verifier.of_key(key)
        verifier.verify(signed(claims(), key), NOW + 3600 + LEEWAY - 1)
        verifier.verify(signed(claims(), key), NOW - LEEWAY + 1)

    def test_an_expired_token_is_rejected(self, key: rsa.RSAPrivateKey) -> None:
        token = mint(key, namespace="shop", service_account="cart", lifetime=600, now=NOW)
        assert "token has expired" == rejection(Verifier.of_key(key), token,
                                                NOW + 600 + LEEWAY)

    def test_a_token_before_its_nbf_is_rejected(self, key: rsa.RSAPrivateKey) -> None:
        token = mint(key, namespace="shop", service_account="cart", now=NOW + 3600)
        assert "token is not valid yet" == rejection(Verifier.of_key(key), token)

    def test_a_token_issued_in_the_future_is_rejected(self, key: rsa.RSAPrivateKey) -> None:
        token = signed(claims(iat=int(NOW) + 600), key)
        assert "token is issued in the future" == rejection(Verifier.of_key(key), token)

    @pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
    def test_a_token_without_a_time_is_rejected(self, key: rsa.RSAPrivateKey,
                                                claim: str) -> None:
        token = signed(claims(**{claim: None}), key)
        assert f"token has no valid {claim}" == rejection(Verifier.of_key(key), token)

    def test_a_time_that_is_not_a_number_is_rejected(self, key: rsa.RSAPrivateKey) -> None:
        token = signed(claims(iat=str(int(NOW))), key)
        assert "token has no valid iat" == rejection(Verifier.of_key(key), token)

    @pytest.mark.parametrize("audience", [
        pytest.param(["sts.amazonaws.com"], id="other"),
        pytest.param("https://kubernetes.default.svc", id="api-server"),
        pytest.param(None, id="missing"),
    ])
    def test_a_token_for_another_audience_is_rejected(
            self, key: rsa.RSAPrivateKey, audience: Any) -> None:
        token = signed(claims(aud=audience), key)
        assert "wrong audience" == rejection(Verifier.of_key(key), token)

    def test_a_token_signed_by_an_untrusted_key_is_rejected(
            self, key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
        """Its own kid names no trusted key; our kid, or none, fails the signature."""
        verifier = Verifier.of_key(key)
        assert "unknown signing key" == rejection(verifier, signed(claims(), other_key))
        forged = signed(claims(), other_key, kid=key_id(key.public_key()))
        assert "bad signature" == rejection(verifier, forged)
        assert "bad signature" == rejection(verifier, signed(claims(), other_key, kid=None))

    def test_a_tampered_payload_is_rejected(self, key: rsa.RSAPrivateKey) -> None:
        header, _, signature = mint(key, namespace="shop", service_account="cart",
                                    now=NOW).split(".")
        payload = b64(json.dumps(claims()).encode())  # default/app instead of shop/cart
        token = f"{header}.{payload}.{signature}"
        assert "bad signature" == rejection(Verifier.of_key(key), token)

    def test_unsigned_and_hmac_tokens_are_refused(self, key: rsa.RSAPrivateKey) -> None:
        """`none`, and HS256 keyed with the public key PEM (the classic confusion)."""
        body = b64(json.dumps(claims()).encode())
        unsigned = b64(b'{"alg":"none"}') + f".{body}."
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        head = b64(json.dumps({"alg": "HS256", "kid": key_id(key.public_key())}).encode())
        mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
        verifier = Verifier.of_key(key)
        assert "unsupported signing algorithm" == rejection(verifier, unsigned)
        assert "unsupported signing algorithm" == rejection(verifier, f"{head}.{body}.{b64(mac)}")

    def test_an_es256_header_on_an_rsa_key_finds_no_key(self, key: rsa.RSAPrivateKey,
                                                       ec_key: ec.EllipticCurvePrivateKey,
                                                       ) -> None:
        token = signed(claims(), ec_key, algorithm="ES256", kid=key_id(key.public_key()))
        assert "unknown signing key" == rejection(Verifier.of_key(key), token)

    def test_a_token_without_the_kubernetes_claim_is_rejected(
            self, key: rsa.RSAPrivateKey) -> None:
        token = signed(claims(**{"kubernetes.io": None}), key)
        assert "token has no kubernetes.io claim" == rejection(Verifier.of_key(key), token)

    @pytest.mark.parametrize("identity", [
        pytest.param({"serviceaccount": {"name": "app"}}, id="no-namespace"),
        pytest.param({"namespace": "default"}, id="no-serviceaccount"),
        pytest.param({"namespace": "default", "serviceaccount": {}}, id="no-sa-name"),
        pytest.param({"namespace": "Default", "serviceaccount": {"name": "app"}},
                     id="bad-namespace"),
        pytest.param({"namespace": "default", "serviceaccount": {"name": "app"},
                      "pod": {"name": 7}}, id="pod-name-number"),
    ])
    def test_a_malformed_kubernetes_claim_is_rejected(
            self, key: rsa.RSAPrivateKey, identity: dict[str, Any]) -> None:
        token = signed(claims(**{"kubernetes.io": identity}), key)
        assert rejection(Verifier.of_key(key), token).startswith(
            "malformed kubernetes.io claim")

    def test_pod_name_and_uid_are_optional(self, key: rsa.RSAPrivateKey) -> None:
        identity = {"namespace": "default", "serviceaccount": {"name": "app"}, "pod": {}}
        token = signed(claims(**{"kubernetes.io": identity}), key)
        assert PodClaims("default", "app", "", "", NOW + 3600) == \
            Verifier.of_key(key).verify(token, NOW)

    @pytest.mark.parametrize("token", [
        pytest.param("", id="empty"),
        pytest.param("not-a-jwt", id="one-part"),
        pytest.param("e30.e30", id="two-parts"),
        pytest.param("!!!.???.###", id="not-base64"),
        pytest.param("ëyJ.e30.e30", id="not-ascii"),
    ])
    def test_garbage_is_a_malformed_token(self, key: rsa.RSAPrivateKey, token: str) -> None:
        assert "malformed token" == rejection(Verifier.of_key(key), token)

    @pytest.mark.parametrize("payload", [b"not json", b"[1, 2]"])
    def test_a_signed_payload_that_is_no_json_object_is_malformed(
            self, key: rsa.RSAPrivateKey, payload: bytes) -> None:
        token = jwt.PyJWS().encode(payload, key, algorithm="RS256",
                                   headers={"kid": key_id(key.public_key())})
        assert "malformed token" == rejection(Verifier.of_key(key), token)

    @pytest.mark.parametrize("suffix", ["\r\n", "\n", "\r"])
    def test_a_token_with_cr_or_lf_is_malformed(self, key: rsa.RSAPrivateKey,
                                                suffix: str) -> None:
        """[K-03] A valid token with a line break added is refused, never trimmed."""
        token = mint(key, namespace="shop", service_account="cart", now=NOW)
        assert "malformed token" == rejection(Verifier.of_key(key), token + suffix)
        assert "malformed token" == rejection(Verifier.of_key(key), suffix + token)

    def test_an_oversized_token_is_malformed_even_if_signed(
            self, key: rsa.RSAPrivateKey) -> None:
        token = signed(claims(padding="x" * MAX_TOKEN_LENGTH), key)
        assert "malformed token" == rejection(Verifier.of_key(key), token)

    def test_a_kid_chooses_the_key_among_several(self, tmp_path: Path,
                                                 key: rsa.RSAPrivateKey,
                                                 other_key: rsa.RSAPrivateKey) -> None:
        """Without a kid every key is tried."""
        path = tmp_path / "keys.pem"
        path.write_bytes(pem_public(other_key) + pem_public(key))
        verifier = Verifier.from_files([path])
        assert "app" == verifier.verify(signed(claims(), key), NOW).service_account
        assert "app" == verifier.verify(signed(claims(), key, kid=None), NOW).service_account


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def pem_private(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
                encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption or serialization.NoEncryption())


def certificate(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "service-account-issuer")])
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=36500))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **fields: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        entry = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        entry = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**entry, **fields}


class TestKeyFiles:
    def test_a_jwks_of_rsa_and_ec_keys_is_trusted(self, tmp_path: Path,
                                                  key: rsa.RSAPrivateKey,
                                                  ec_key: ec.EllipticCurvePrivateKey) -> None:
        """Keys are chosen by their JWKS kid, or the derived one when a key has none."""
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps({"keys": [jwk(key, kid="rsa-1", use="sig"),
                                             jwk(ec_key)]}))
        verifier = Verifier.from_files([str(path)])
        assert "app" == verifier.verify(signed(claims(), key, kid="rsa-1"), NOW).service_account
        assert "app" == verifier.verify(signed(claims(), ec_key, algorithm="ES256"),
                                        NOW).service_account
        assert "unknown signing key" == rejection(verifier, signed(claims(), key))

    def test_encryption_keys_in_a_jwks_are_skipped(self, tmp_path: Path,
                                                   key: rsa.RSAPrivateKey) -> None:
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps({"keys": [{"kty": "oct", "use": "enc", "k": "AAAA"},
                                             jwk(key)]}))
        token = mint(key, namespace="shop", service_account="cart", now=NOW)
        assert "cart" == Verifier.from_files([path]).verify(token, NOW).service_account

    @pytest.mark.parametrize("form", ["public", "certificate", "private"])
    def test_a_pem_key_or_certificate_is_trusted(self, tmp_path: Path,
                                                 key: rsa.RSAPrivateKey, form: str) -> None:
        """A cluster's sa.pub (or its certificate, or sa.key) verifies the tokens it signs."""
        data = {"public": pem_public, "certificate": certificate,
                "private": pem_private}[form](key)
        path = tmp_path / "issuer.pem"
        path.write_bytes(data)
        token = mint(key, namespace="shop", service_account="cart", now=NOW)
        assert "cart" == Verifier.from_files([path]).verify(token, NOW).service_account

    def test_keys_of_several_files_are_trusted(self, tmp_path: Path, key: rsa.RSAPrivateKey,
                                               ec_key: ec.EllipticCurvePrivateKey) -> None:
        (tmp_path / "a.pem").write_bytes(pem_public(key))
        (tmp_path / "b.json").write_text(json.dumps({"keys": [jwk(ec_key)]}))
        verifier = Verifier.from_files([tmp_path / "a.pem", tmp_path / "b.json"])
        assert 2 == len(verifier.keys)
        verifier.verify(signed(claims(), ec_key, algorithm="ES256"), NOW)

    @pytest.mark.parametrize("content", [
        pytest.param(b"", id="empty"),
        pytest.param(b"hello", id="neither"),
        pytest.param(b"{not json", id="bad-json"),
        pytest.param(b'{"issuer": "x"}', id="json-not-jwks"),
        pytest.param(b'{"keys": []}', id="no-keys"),
        pytest.param(b'{"keys": ["x"]}', id="key-not-object"),
        pytest.param(b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', id="hmac-key"),
        pytest.param(b'{"keys": [{"kty": "RSA", "n": "AQAB"}]}', id="rsa-without-e"),
        pytest.param(b'{"keys": [{"kty": "RSA", "alg": "RS512", "n": "x", "e": "AQAB"}]}',
                     id="other-alg"),
        pytest.param(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                     id="bad-pem"),
        pytest.param(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                     b"-----END CERTIFICATE REQUEST-----\n", id="pem-csr"),
    ])
    def test_an_unusable_file_is_a_config_error_naming_it(self, tmp_path: Path,
                                                          content: bytes) -> None:
        path = tmp_path / "issuer-keys"
        path.write_bytes(content)
        with pytest.raises(ConfigError, match=str(path)):
            Verifier.from_files([path])

    @pytest.mark.parametrize("make", [
        pytest.param(lambda: pem_public(rsa.generate_private_key(65537, 1024)),  # noqa: S505 (refused)
                     id="rsa-1024"),
        pytest.param(lambda: pem_public(ec.generate_private_key(ec.SECP384R1())),
                     id="ec-p384"),
        pytest.param(lambda: pem_private(ec.generate_private_key(ec.SECP256R1()),
                                         serialization.BestAvailableEncryption(b"pw")),
                     id="encrypted-private"),
    ])
    def test_a_key_that_cannot_sign_our_algorithms_is_a_config_error(
            self, tmp_path: Path, make: Any) -> None:
        path = tmp_path / "issuer.pem"
        path.write_bytes(make())
        with pytest.raises(ConfigError, match=str(path)):
            Verifier.from_files([path])

    def test_a_missing_file_is_a_config_error_naming_it(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.pem"
        with pytest.raises(ConfigError, match=str(path)):
            Verifier.from_files([path])


class TestSigningKeyFile:
    def test_the_key_is_created_owner_only_and_reused(self, tmp_path: Path) -> None:
        state = tmp_path / "state"
        first = load_or_create_key(state)
        path = state / KEY_FILE
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS #8
        assert 2048 == first.key_size
        second = load_or_create_key(state)
        assert first.private_numbers() == second.private_numbers()

    def test_servers_starting_together_agree_on_one_key(self, tmp_path: Path) -> None:
        state = tmp_path / "state"
        with ThreadPoolExecutor(4) as pool:
            keys = list(pool.map(lambda _: load_or_create_key(state), range(4)))
        assert 1 == len({key_id(k.public_key()) for k in keys})
        assert [KEY_FILE] == [p.name for p in state.iterdir() if p.name != "lock"]

    def test_a_key_others_can_read_is_refused(self, tmp_path: Path) -> None:
        state = tmp_path / "state"
        load_or_create_key(state)
        (state / KEY_FILE).chmod(0o640)
        with pytest.raises(StartupError, match="chmod 600"):
            load_or_create_key(state)

    def test_a_key_file_that_is_not_a_key_is_refused(self, tmp_path: Path) -> None:
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        (state / KEY_FILE).write_bytes(b"junk")
        (state / KEY_FILE).chmod(0o600)
        with pytest.raises(StartupError, match="move it away"):
            load_or_create_key(state)
