"""
Service-account tokens for playing a pod without a cluster: minted with the state
directory's signing key (imds.containers.satoken), which a server without
`--pod-identity-keys` verifies against, and written where an SDK reads them
(`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, [K-06]). What `imds pod-token` and
`imds env pod-identity` share.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from imds.containers import satoken
from imds.errors import ConfigError
from imds.instance import statedir

TOKENS_DIR = "tokens"
DEFAULT_NAMESPACE = "default"
DEFAULT_SERVICE_ACCOUNT = "default"
DEFAULT_POD_NAME = "imds-local-pod"
# A day, as a projected service-account token usually lives.
DEFAULT_LIFETIME = 86400
MAX_LIFETIME = 10 * 365 * 86400

# Kubernetes object names: a namespace is a DNS-1123 label, a service account and a pod a
# DNS-1123 subdomain. Strict on purpose: the names also make the token file's name, so
# neither `/` nor `..` may get through.
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_NAMES = {
    "--namespace": re.compile(_LABEL),
    "--service-account": re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*"),
    "--pod-name": re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*"),
}
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Fixed, so that a pod of the same namespace and name always gets the same uid.
_POD_UID_NAMESPACE = uuid.UUID("6f1b7f9e-3c52-4a4e-9d0e-1a6f0c1e5b23")


@dataclass(frozen=True)
class Pod:
    """Who the token speaks for: the claims a projected token carries about its pod."""

    namespace: str = DEFAULT_NAMESPACE
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    name: str = DEFAULT_POD_NAME
    uid: str = ""

    @classmethod
    def of(cls, namespace: str, service_account: str, name: str, uid: str | None) -> Pod:
        """Checked names; without a uid, one derived from the namespace and pod name."""
        for flag, value in (("--namespace", namespace), ("--service-account", service_account),
                            ("--pod-name", name)):
            if not _NAMES[flag].fullmatch(value):
                raise ConfigError(f"{flag} {value!r}: expected a Kubernetes name (lower-case "
                                  "letters, digits and -, dots between parts)")
        if uid is None:
            uid = str(uuid.uuid5(_POD_UID_NAMESPACE, f"{namespace}/{name}"))
        elif not _UID.fullmatch(uid):
            raise ConfigError(f"--pod-uid {uid!r}: expected a UUID in lower case")
        return cls(namespace, service_account, name, uid)


def mint(state_dir: str | Path, pod: Pod, lifetime: int = DEFAULT_LIFETIME) -> str:
    """
    A token for `pod`, signed with the state directory's key (created if missing). Raises
    ConfigError for a bad lifetime or an unsafe state directory, StartupError when the key
    cannot be created or read.
    """
    if not 1 <= lifetime <= MAX_LIFETIME:
        raise ConfigError(f"--lifetime {lifetime}: expected 1..{MAX_LIFETIME} seconds")
    key = satoken.load_or_create_key(state_dir)
    try:
        return satoken.mint(key, namespace=pod.namespace, service_account=pod.service_account,
                            pod_name=pod.name, pod_uid=pod.uid, lifetime=lifetime)
    except ValueError as exc:  # names checked above; satoken's own rules, should they differ
        raise ConfigError(str(exc)) from None


def default_path(state_dir: str | Path, pod: Pod) -> Path:
    """`<state-dir>/tokens/<namespace>.<service-account>.jwt`, its folder created (0700)."""
    folder = statedir.prepare(state_dir) / TOKENS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{pod.namespace}.{pod.service_account}.jwt"


def write(path: Path, token: str) -> Path:
    """
    Put `token` at `path` (mode 0600), whole: an SDK re-reads the file on every fetch [K-03]
    and must never see half a token. No newline after it, as in a projected token file.
    Returns the absolute path.
    """
    path = Path(path).absolute()
    if not path.parent.is_dir():
        raise ConfigError(f"token file {str(path)!r}: no such directory {str(path.parent)!r}")
    try:
        statedir.replace_file(path, token.encode("ascii"), 0o600)
    except OSError as exc:
        raise ConfigError(f"token file {str(path)!r}: cannot write it: "
                          f"{exc.strerror or exc}") from None
    return path
