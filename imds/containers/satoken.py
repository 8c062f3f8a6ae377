"""
STAND-IN for the satoken helper's module (API of /work/brief/ISSUE14.md), so that branch
envcmd can run `imds pod-token` before it lands; removed when main brings the real one.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from imds.instance import statedir

AUDIENCE = "pods.eks.amazonaws.com"
KEY_FILE = "pod-identity-key.pem"
ISSUER = "https://imds.local"


def load_or_create_key(state_dir: str) -> rsa.RSAPrivateKey:
    with statedir.locked(state_dir) as directory:
        path = Path(directory) / KEY_FILE
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            statedir.write_once(path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()), 0o600)
        loaded = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint(key: rsa.RSAPrivateKey, *, namespace: str, service_account: str, pod_name: str = "",
         pod_uid: str = "", lifetime: int = 86400, now: float | None = None,
         issuer: str = ISSUER) -> str:
    at = int(time.time() if now is None else now)
    claims = {"aud": [AUDIENCE], "iss": issuer, "iat": at, "nbf": at, "exp": at + lifetime,
              "sub": f"system:serviceaccount:{namespace}:{service_account}",
              "kubernetes.io": {"namespace": namespace,
                                "serviceaccount": {"name": service_account, "uid": ""},
                                "pod": {"name": pod_name, "uid": pod_uid}},
              "jti": _b64(os.urandom(12))}
    head = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{_b64(signature)}"
