"""
Exceptions raised by imds.

    ImdsError
    ├── ConfigError          a setting is missing or malformed (names the key and value)
    ├── StartupError         the server cannot start serving (exit code 3)
    └── SourceError          a credential source could not produce credentials
        └── PermanentSourceError   retrying will not help (AccessDenied, no base credentials)
"""

from __future__ import annotations


class ImdsError(Exception):
    """Base of everything imds raises on purpose."""


class ConfigError(ImdsError):
    """Raised when a setting from the CLI, the environment or the config file is invalid."""


class StartupError(ImdsError):
    """Raised when the server cannot start: first credentials unavailable, port in use."""


class SourceError(ImdsError):
    """Raised by a credential source when one fetch fails; the rotator retries it."""


class PermanentSourceError(SourceError):
    """Raised when a fetch failed in a way that retrying cannot fix (but the rotator still may)."""
