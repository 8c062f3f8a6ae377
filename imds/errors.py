"""
Every exception imds raises on purpose, in one tree. Imports nothing of imds, so every layer
may raise and catch them (README, "Where things are").

    ImdsError
    ├── ConfigError      a setting is missing or malformed (names the key and value); exit 2
    ├── StartupError     the server cannot start serving; exit 3
    ├── SourceError      a credential source could not produce credentials; the rotator
    │                    retries with backoff, whatever the cause
    ├── InvalidTTL       a token request's TTL header is missing, malformed or out of range
    ├── FaultError       a fault specification sent to the control API is invalid
    ├── LabError         a rotation-lab action cannot be done; carries the control API's status
    ├── TokenRejected    an EKS Pod Identity service-account token fails verification; the
    │                    endpoint answers 400 with the reason [K-08]
    ├── CtlError         `imds ctl` cannot reach the control API, or it refused; exit 1
    │   └── ServerChoiceError  several servers run on the state directory and none is
    │                          chosen, or --server names none or several; exit 2
    ├── FlowError        `imds env`/`imds exec` find no server running, or one that does
    │                    not serve the chosen flow; exit 1
    └── NodeError        `imds node-setup`/`node-cleanup` refused or failed; whatever that
                         run had added is rolled back first; exit 1
"""

from __future__ import annotations


class ImdsError(Exception):
    """Base of everything imds raises on purpose."""


class ConfigError(ImdsError):
    """Raised when a setting from the CLI, the environment or the config file is invalid."""


class StartupError(ImdsError):
    """Raised when the server cannot start: first credentials unavailable, port in use."""


class SourceError(ImdsError):
    """
    Raised by a credential source when one fetch fails. The message says what to do
    (AccessDenied names the trust policy, no base credentials names the chain). The rotator
    retries every failure alike: a role's trust policy or the user's keys can be fixed while
    the server runs, so no failure is treated as final.
    """


class InvalidTTL(ImdsError, ValueError):
    """Raised when a TTL header is missing, not a plain integer, or out of range [T-03] [T-04]."""


class FaultError(ImdsError, ValueError):
    """Raised when a fault specification is invalid; the message names the field."""


class LabError(ImdsError):
    """Raised for an action that cannot be done; `status` is the control API's answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class TokenRejected(ImdsError):
    """Raised when a service-account token fails verification; says why, never holds it."""


class CtlError(ImdsError):
    """Raised when the control API cannot be reached or refuses a request."""


class ServerChoiceError(CtlError):
    """
    Raised when `imds ctl` cannot tell which server is meant: several run on the state
    directory and none was chosen, or `--server` names none of them or several.
    """


class FlowError(ImdsError):
    """
    Raised when `imds env` or `imds exec` cannot point a client at a running server: none
    runs on the state directory, or it lacks what the flow needs (an ECS task, a token).
    """


class NodeError(ImdsError):
    """
    Raised by `imds node-setup` and `imds node-cleanup` (imds.node) when the node cannot be
    set up or cleaned: an address already on another interface, a link or chain by our name
    that is not ours, a tool missing, the kernel refusing. Raised only after that run's own
    changes are rolled back, so the node is as it was.
    """
