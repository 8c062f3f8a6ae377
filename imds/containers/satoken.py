"""
Kubernetes service-account tokens for EKS Pod Identity [K-06] [K-08]: minted as the API
server projects them for the audience `pods.eks.amazonaws.com`, and verified as EKS Auth
does before the Pod Identity agent answers.

- Minted: RS256 by `<state-dir>/pod-identity-key.pem`, claims as the API server writes
  them (`aud`, `exp`, `iat`, `iss`, `jti`, `kubernetes.io`, `nbf`, `sub`), and `kid` the
  base64url SHA-256 of the public key's DER SubjectPublicKeyInfo, as the API server derives
  it (Kubernetes `keyIDFromPublicKey`): a cluster's `sa.pub` names the kid of its tokens.
- Verified: against the keys of `--pod-identity-keys` (JWKS or PEM) or our own key. Only
  RS256 and ES256: `none` or HMAC would let anyone holding the public key sign. Times are
  checked against the caller's `now` with the minute of leeway Kubernetes allows (go-jose's
  `DefaultLeeway`). Every failure is a TokenRejected whose message fits a 400 body [K-08]
  and never holds the token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.types import Options

from imds.errors import ConfigError, StartupError, TokenRejected
from imds.instance.statedir import locked, write_once

AUDIENCE = "pods.eks.amazonaws.com"
KEY_FILE = "pod-identity-key.pem"
# kubeadm's and kind's default --service-account-issuer; EKS's is its OIDC provider URL.
ISSUER = "https://kubernetes.default.svc.cluster.local"
KEY_BITS = 2048
ALGORITHMS = ("RS256", "ES256")
LEEWAY = 60.0
# Our bound, not the agent's: a real projected token is about 1 KiB; this caps the work a
# caller can ask for before any signature is checked.
MAX_TOKEN_LENGTH = 16 * 1024

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(_LABEL)  # RFC 1123 label, at most 63 characters
_DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")  # at most 253 characters
_UID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)
# PyJWT checks the signature only; `_pod_claims` checks the rest against the given `now`.
_SIGNATURE_ONLY: Options = {
    "verify_signature": True, "verify_exp": False, "verify_nbf": False,
    "verify_iat": False, "verify_aud": False, "verify_iss": False, "verify_sub": False,
    "verify_jti": False,
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class PodClaims:
    """Who a verified token speaks for (its `kubernetes.io` claim) and until when."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class TrustedKey:
    kid: str
    algorithm: str  # one of ALGORITHMS
    key: PublicKey


def key_id(public: PublicKey) -> str:
    """The API server's kid for `public`: base64url SHA-256 of its DER SPKI, unpadded."""
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def load_or_create_key(state_dir: str | Path) -> rsa.RSAPrivateKey:
    """
    The state directory's token-signing key, created on first use (RSA-2048, PKCS #8
    PEM, 0600) under its lock (imds.instance.statedir), so servers starting at once make
    one key and all sign with the one on disk.

    Raises ConfigError when the directory is unsafe to trust, StartupError when the key
    cannot be created or read.
    """
    directory = Path(state_dir)
    try:
        with locked(directory) as prepared:
            path = prepared / KEY_FILE
            if not path.exists():
                key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
                write_once(path, key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), 0o600)
            return _read_key(path)
    except OSError as exc:
        raise StartupError(f"state directory {str(directory)!r}: {exc.strerror or exc}") \
            from exc


def _read_key(path: Path) -> rsa.RSAPrivateKey:
    # Whoever reads this key can mint a token for any service account, so for any role.
    if path.stat().st_mode & 0o077:
        raise StartupError(f"{path} is readable by group or others; run `chmod 600 {path}`")
    try:
        # Our own key from our own 0700 directory: cryptography documents skipping the
        # (slow) consistency check as safe for trusted keys.
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None,
                                                    unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise StartupError(f"{path} is not an unencrypted PEM private key; move it away "
                           "to get a new one") from exc
    if not isinstance(loaded, rsa.RSAPrivateKey) or loaded.key_size != KEY_BITS:
        raise StartupError(f"{path} is not an RSA-{KEY_BITS} key; move it away to get a "
                           "new one")
    return loaded


def _identity_problem(namespace: str, service_account: str, pod_name: str,
                      pod_uid: str) -> str | None:
    """What is wrong with these Kubernetes names, or None: the same rules for both ways."""
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        return "namespace is not a DNS-1123 label"
    if len(service_account) > 253 or not _DNS_SUBDOMAIN.fullmatch(service_account):
        return "service account name is not a DNS-1123 subdomain"
    if pod_name and (len(pod_name) > 253 or not _DNS_SUBDOMAIN.fullmatch(pod_name)):
        return "pod name is not a DNS-1123 subdomain"
    if pod_uid and not _UID.fullmatch(pod_uid):
        return "pod uid is not a UUID"
    if pod_uid and not pod_name:
        return "pod uid without a pod name"
    return None


def mint(key: rsa.RSAPrivateKey, *, namespace: str, service_account: str,
         pod_name: str = "", pod_uid: str = "", lifetime: int = 86400,
         now: float | None = None, issuer: str = ISSUER) -> str:
    """
    A projected service-account token for `pods.eks.amazonaws.com`, as kubelet mounts it
    for EKS Pod Identity [K-06]; uids not given are made up (uuid4).

    Raises ValueError for a name Kubernetes would refuse or a lifetime that is not positive.
    """
    problem = _identity_problem(namespace, service_account, pod_name, pod_uid)
    if problem:
        raise ValueError(f"{problem}: namespace={namespace!r} "
                         f"service_account={service_account!r} pod_name={pod_name!r} "
                         f"pod_uid={pod_uid!r}")
    if lifetime <= 0:
        raise ValueError(f"lifetime must be a positive number of seconds, not {lifetime}")
    issued = int(time.time() if now is None else now)
    identity: dict[str, Any] = {
        "namespace": namespace,
        "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
    }
    if pod_name:
        identity["pod"] = {"name": pod_name, "uid": pod_uid or str(uuid.uuid4())}
    claims = {
        "aud": [AUDIENCE],
        "exp": issued + lifetime,
        "iat": issued,
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": identity,
        "nbf": issued,
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
    }
    # The API server's header is {"alg", "kid"}: no `typ`.
    return jwt.encode(claims, key, algorithm="RS256",
                      headers={"kid": key_id(key.public_key()), "typ": None})


@dataclass(frozen=True, slots=True)
class Verifier:
    """The keys service-account tokens may be signed with, and the checks of K-08."""

    keys: tuple[TrustedKey, ...]

    @classmethod
    def of_key(cls, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | PublicKey
               ) -> Verifier:
        """Trust one key (a private key: its public half), as when we mint the tokens."""
        public = key.public_key() if isinstance(
            key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else key
        return cls((_trusted(public),))

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> Verifier:
        """
        Trust the keys in `paths` (`--pod-identity-keys`): each a JWKS (`{"keys": [...]}`,
        RSA and EC P-256 keys) or PEM (public keys, certificates, private keys: their
        public halves). Raises ConfigError naming the file that cannot be used.
        """
        keys: list[TrustedKey] = []
        for path in paths:
            keys += _load_file(Path(path))
        if not keys:
            raise ConfigError("--pod-identity-keys: no file given")
        return cls(tuple(keys))

    def verify(self, token: str, now: float, *, leeway: float = LEEWAY) -> PodClaims:
        """The pod a token speaks for, if it is valid at `now`; else TokenRejected [K-08]."""
        # [K-03] The SDKs never send a token with CR or LF; anything else this size or
        # shape is refused before it is parsed.
        if (not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii()
                or "\r" in token or "\n" in token):
            raise TokenRejected("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise TokenRejected("unsupported signing algorithm")
        kid = header.get("kid")
        candidates = [trusted for trusted in self.keys if trusted.algorithm == algorithm
                      and (kid is None or trusted.kid == kid)]
        if not candidates:
            raise TokenRejected("unknown signing key")
        return _pod_claims(_decode(token, candidates), now, leeway)


def _decode(token: str, candidates: list[TrustedKey]) -> dict[str, Any]:
    # `from None` throughout: PyJWT's exceptions may quote the token.
    for trusted in candidates:
        try:
            return jwt.decode(token, trusted.key, algorithms=[trusted.algorithm],
                              options=_SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError:
            raise TokenRejected("malformed token") from None
    raise TokenRejected("bad signature")


def _pod_claims(claims: dict[str, Any], now: float, leeway: float) -> PodClaims:
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or AUDIENCE not in audiences:
        raise TokenRejected("wrong audience")
    times: dict[str, float] = {}
    for claim in ("exp", "nbf", "iat"):
        value = claims.get(claim)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value)):
            raise TokenRejected(f"token has no valid {claim}")
        times[claim] = float(value)
    if now >= times["exp"] + leeway:
        raise TokenRejected("token has expired")
    if now < times["nbf"] - leeway:
        raise TokenRejected("token is not valid yet")
    if now < times["iat"] - leeway:
        raise TokenRejected("token is issued in the future")
    identity = claims.get("kubernetes.io")
    if not isinstance(identity, dict):
        raise TokenRejected("token has no kubernetes.io claim")
    account = identity.get("serviceaccount")
    pod = identity.get("pod")
    if pod is None:  # no pod: a token requested for the service account alone
        pod = {}
    namespace = identity.get("namespace")
    name = account.get("name") if isinstance(account, dict) else None
    pod_name = pod.get("name", "") if isinstance(pod, dict) else None
    pod_uid = pod.get("uid", "") if isinstance(pod, dict) else None
    if not (isinstance(namespace, str) and isinstance(name, str)
            and isinstance(pod_name, str) and isinstance(pod_uid, str)):
        raise TokenRejected("malformed kubernetes.io claim")
    problem = _identity_problem(namespace, name, pod_name, pod_uid)
    if problem:  # the values stay out: whatever a token holds is not for a log line
        raise TokenRejected(f"malformed kubernetes.io claim: {problem}")
    return PodClaims(namespace, name, pod_name, pod_uid, times["exp"])


def _load_file(path: Path) -> list[TrustedKey]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _bad_file(path, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        if data.lstrip().startswith(b"{"):
            keys = _from_jwks(data)
        elif b"-----BEGIN " in data:
            keys = _from_pem(data)
        else:
            raise ValueError("is neither a JWKS (JSON) nor PEM")
        if not keys:
            raise ValueError("holds no signing key")
    except ValueError as exc:
        raise _bad_file(path, str(exc)) from exc
    return keys


def _bad_file(path: Path, reason: str) -> ConfigError:
    return ConfigError(f"--pod-identity-keys {str(path)!r} {reason}; give the cluster's "
                       "service-account issuer keys as a JWKS or PEM file")


def _from_jwks(data: bytes) -> list[TrustedKey]:
    try:
        document = json.loads(data)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError("is not valid JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('is not a JWKS: no "keys" list')
    # Encryption keys may share a JWKS with signing keys (RFC 7517 4.2); they sign nothing.
    return [_from_jwk(index, entry) for index, entry in enumerate(entries)
            if not (isinstance(entry, dict) and entry.get("use") == "enc")]


def _from_jwk(index: int, entry: object) -> TrustedKey:
    where = f"key {index}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not a JSON object")
    kty = entry.get("kty")
    algorithm = {"RSA": "RS256", "EC": "ES256"}.get(kty) if isinstance(kty, str) else None
    if algorithm is None:
        raise ValueError(f"{where} is not an RSA or EC key (kty)")
    if entry.get("alg", algorithm) != algorithm:
        raise ValueError(f"{where} is for another algorithm than {algorithm} (alg)")
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError(f"{where} has a kid that is not a string")
    try:
        # Messages of PyJWT's key errors quote the JWK, private parts included: not kept.
        loaded = jwt.PyJWK(entry, algorithm).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
        raise ValueError(f"{where} is not a valid {kty} JWK") from None
    if isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        loaded = loaded.public_key()
    return _trusted(loaded, kid, where)


def _from_pem(data: bytes) -> list[TrustedKey]:
    keys = []
    for number, block in enumerate(_PEM_BLOCK.finditer(data), start=1):
        label = block[1].decode()
        where = f"PEM block {number} ({label})"
        if label.startswith("ENCRYPTED"):
            raise ValueError(f"{where} is encrypted; give its public key instead")
        if label != "CERTIFICATE" and not label.endswith(("PUBLIC KEY", "PRIVATE KEY")):
            raise ValueError(f"{where} is not a key or certificate")
        try:
            public = _pem_public(label, block[0])
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError(f"{where} cannot be read") from None
        keys.append(_trusted(public, None, where))
    return keys


def _pem_public(label: str, block: bytes) -> object:
    if label == "CERTIFICATE":
        return x509.load_pem_x509_certificate(block).public_key()
    if label.endswith("PUBLIC KEY"):
        return serialization.load_pem_public_key(block)
    return serialization.load_pem_private_key(block, password=None).public_key()


def _trusted(public: object, kid: str | None = None, where: str = "key") -> TrustedKey:
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < KEY_BITS:
            raise ValueError(f"{where} is RSA-{public.key_size}; at least {KEY_BITS} bits")
        return TrustedKey(kid if kid is not None else key_id(public), "RS256", public)
    if isinstance(public, ec.EllipticCurvePublicKey):
        if not isinstance(public.curve, ec.SECP256R1):
            raise ValueError(f"{where} is on curve {public.curve.name}; only P-256 (ES256)")
        return TrustedKey(kid if kid is not None else key_id(public), "ES256", public)
    raise ValueError(f"{where} is not an RSA or EC key")
