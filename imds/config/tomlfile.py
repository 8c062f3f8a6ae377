"""
Reading a file a setting names (`--config`, `--role-map`, `--pod-identity-associations`):
every way it can fail is a ConfigError that starts with the setting, so a bad file never
ends in a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from imds.errors import ConfigError


def read_bytes(path: str, where: str) -> bytes:
    """The file's bytes; `where` names the setting and the file in each message."""
    try:
        with Path(path).open("rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory; give a file") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None


def decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None


def parse_toml(data: bytes, where: str) -> dict[str, Any]:
    """A TOML document's table; read apart from parsed, so a reload can tell them apart."""
    try:
        return tomllib.loads(decode(data, where))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None


def read_toml(path: str, where: str) -> dict[str, Any]:
    """The file's table; `where` names the setting and the file in each message."""
    return parse_toml(read_bytes(path, where), where)


def read_text(path: str, where: str) -> str:
    return decode(read_bytes(path, where), where)
